// Drives Portico's dashboard in a real headless Chromium (Debian's, through playwright-core).
// Usage: node dashboard.mjs ADMIN_URL SCREENSHOT_DIR PROBE_METHOD PROBE_PATH
// 1. Opens the Upstreams page, prints "watching" and waits (up to 30 s) for a breaker to
//    show open on the page by itself (the test stops an upstream meanwhile).
// 2. Waits for a line on stdin (the test's traffic is all recorded), then visits every
//    page, waits for its content, takes a screenshot of each.
// 3. Submits the Explain form with the probe.
// Prints one JSON line: each page's text, the explanation, console errors and CSP
// violations seen.
import { chromium } from 'playwright-core';

const [admin, shots, method, path] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const problems = [];
const violations = [];
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.setDefaultTimeout(30000);
  page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
  page.on('pageerror', (e) => problems.push(String(e)));
  await page.exposeFunction('reportViolation', (v) => violations.push(v));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => window.reportViolation(`${e.violatedDirective}: ${e.blockedURI}`));
  });

  await page.goto(`${admin}/ui/#upstreams`);
  await page.waitForSelector('main[data-page="upstreams"] table#upstreams tbody tr');
  console.log('watching');
  await page.waitForSelector('td.breaker.bad');
  console.log('open');
  await new Promise((resolve) => process.stdin.once('data', resolve));

  const texts = {};
  for (const name of ['overview', 'routes', 'upstreams', 'traffic', 'errors']) {
    await page.goto(`${admin}/ui/#${name}`);
    await page.waitForSelector(`main[data-page="${name}"]`);
    if (name === 'traffic') await page.waitForSelector('svg.chart polyline');
    await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
    texts[name] = await page.innerText('main');
  }
  await page.goto(`${admin}/ui/#explain`);
  await page.waitForSelector('main[data-page="explain"] form#probe');
  await page.fill('input[name="method"]', method);
  await page.fill('input[name="path"]', path);
  await page.click('button[type="submit"]');
  await page.waitForFunction(() => document.getElementById('explanation').textContent.length > 0);
  const explanation = await page.textContent('#explanation');
  await page.screenshot({ path: `${shots}/explain.png`, fullPage: true });
  console.log(JSON.stringify({ texts, explanation, problems, violations }));
} finally {
  await browser.close();
  process.stdin.destroy();
}
