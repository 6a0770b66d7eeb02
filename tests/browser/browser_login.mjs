// Logs in through Portico's OIDC policy with a real headless Chromium (Debian's, driven by
// playwright-core): opens URL, fills in the provider's login form as USER, confirms the
// consent, and prints one JSON line: where it landed, that page's status and the cookies.
// Usage: node browser_login.mjs URL USER
import { chromium } from 'playwright-core';

const [url, user] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // As root in a sandboxless container, without reaching out to Google's services.
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(15000);
  await page.goto(url);
  await page.fill('input[name="login"]', user);
  await page.fill('input[name="password"]', 'any password');
  await page.click('button[type="submit"]');
  await page.waitForSelector('input[value="consent"]', { state: 'attached' });
  const [landed] = await Promise.all([
    page.waitForResponse((r) => r.url() === url),
    page.click('button[type="submit"]'),
  ]);
  const cookies = await page.context().cookies();
  console.log(JSON.stringify({ url: page.url(), status: landed.status(), cookies }));
} catch (e) {
  const pages = browser.contexts().flatMap((c) => c.pages());
  for (const p of pages) console.error(`at ${p.url()}:\n${await p.content()}`);
  throw e;
} finally {
  await browser.close();
}
