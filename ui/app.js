// Portico's dashboard: read-only pages over the admin listener's JSON, polled every two
// seconds. Every value is put in the page as text (never as HTML): route names, paths and
// reasons come from configs and clients.
'use strict';

const REFRESH_MS = 2000;
const pages = { overview, routes, upstreams, traffic, errors, explain };
let timer = null;
let shown = null;
// Bumped when the page changes: an answer for the page left behind is dropped.
let generation = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

async function get(path) {
  const resp = await fetch(path, { headers: { Accept: 'application/json' } });
  if (!resp.ok) throw new Error(`${path}: ${resp.status}`);
  return resp.json();
}

const fmt = {
  num: (n, d = 1) => (n === null || n === undefined ? '–' : Number(n).toFixed(d)),
  ms: (n) => (n === null || n === undefined ? '–' : `${n} ms`),
  ago: (unixMs) => {
    const s = Math.max(0, Math.round((Date.now() - unixMs) / 1000));
    return s < 60 ? `${s} s ago` : s < 3600 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
  },
  time: (unixMs) => new Date(unixMs).toISOString().replace('T', ' ').slice(0, 19),
  duration: (s) => (s < 120 ? `${s} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${Math.round(s / 3600)} h`),
};

function card(k, v, cls) {
  return el('div', { class: 'card' }, el('div', { class: 'k' }, k), el('div', { class: `v ${cls || ''}` }, v));
}

function table(head, rows, id) {
  return el('table', { id }, el('thead', {}, el('tr', {}, head.map((h) => el('th', {}, h)))), el('tbody', {}, rows));
}

function pills(list) {
  return (list || []).map((p) => el('span', { class: 'pill' }, p));
}

// A line chart of several series over the same points.
function chart(series, cls, height, labelled) {
  const width = 600;
  const n = Math.max(...series.map((s) => s.values.length), 2);
  const max = Math.max(1, ...series.flatMap((s) => s.values.map((v) => v || 0)));
  const node = svg('svg', { class: cls, viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: 'none' });
  // A series that is zero throughout would only hide the baseline of the others.
  for (const s of series.filter((x) => x.values.some((v) => v))) {
    const points = s.values.map((v, i) => `${(i * width) / (n - 1)},${height - 4 - ((v || 0) * (height - 16)) / max}`);
    node.append(svg('polyline', { class: s.cls, points: points.join(' ') }));
  }
  return labelled ? el('figure', {}, el('figcaption', { class: 'muted' }, `scale: 0 to ${fmt.num(max, 2)}`), node) : node;
}

function byClass(points, c) {
  return points.map((p) => p.by_class[c] / 10);
}

// Pages: each returns its content; the loop swaps it in whole.

async function overview() {
  const o = await get('/overview');
  const reloads = o.reloads.map((r) =>
    el('tr', {}, el('td', {}, fmt.time(r.at * 1000)), el('td', {}, r.trigger),
      el('td', { class: r.result === 'failed' ? 'bad' : r.result === 'partial' ? 'warn' : 'ok' }, r.result),
      el('td', { class: 'num' }, `${r.took_ms} ms`),
      el('td', {}, r.changes ? el('details', {}, el('summary', {}, 'changes'), el('pre', {}, r.changes)) : null,
        r.errors ? el('pre', { class: 'bad' }, r.errors) : null)));
  const files = o.config_files.map((f) =>
    el('tr', {}, el('td', {}, f.file), el('td', { class: f.status === 'ok' ? 'ok' : 'bad' }, f.status),
      el('td', {}, (f.errors || []).join('\n'))));
  const caches = Object.entries(o.caches).map(([name, c]) =>
    el('tr', {}, el('td', {}, name), el('td', { class: 'num' }, `${fmt.num(c.size_bytes / 1048576, 2)} MiB`)));
  return [
    el('div', { class: 'cards' },
      card('version', o.version), card('config', o.config_hash.slice(0, 12)), card('uptime', fmt.duration(o.uptime_s)),
      card('routes', o.routes), card('upstreams', o.upstreams),
      card('cache hit ratio', o.cache_hit_ratio === null ? '–' : `${fmt.num(o.cache_hit_ratio * 100)} %`),
      card('redis', o.redis ? (o.redis.connected ? 'connected' : 'down') : 'none', o.redis && !o.redis.connected ? 'bad' : ''),
      card('pending restart', o.last_reload.pending_restart.length ? o.last_reload.pending_restart.join(', ') : 'none')),
    el('h2', {}, 'Reloads'),
    table(['time (UTC)', 'trigger', 'result', 'took', 'what'], reloads, 'reloads'),
    files.length ? [el('h2', {}, 'Config files'), table(['file', 'status', 'errors'], files, 'files')] : [],
    caches.length ? [el('h2', {}, 'Caches'), table(['cache', 'size'], caches, 'caches')] : [],
    o.warnings.length ? [el('h2', {}, 'Warnings'), el('pre', {}, o.warnings.join('\n'))] : [],
  ];
}

function action(a) {
  if (a.upstream) return `→ ${a.upstream}`;
  if (a.backends) return `→ ${a.backends.map((b) => `${b.upstream} (${b.weight})`).join(', ')}`;
  if (a.respond) return `responds ${a.respond}`;
  if (a.redirect) return `redirects ${a.redirect}`;
  if (a.aggregate) return `aggregates ${a.aggregate.join(', ')}`;
  return JSON.stringify(a);
}

// A route's match without its empty conditions: `path_prefix: /api; methods: GET`.
function matchText(m) {
  return Object.entries(m || {})
    .filter(([, v]) => v !== null && v !== false && !(typeof v === 'object' && !Object.keys(v).length))
    .map(([k, v]) => `${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`)
    .join('; ') || 'any request';
}

function policyText(p) {
  const details = Object.entries(p)
    .filter(([k, v]) => !['kind', 'name'].includes(k) && v !== '' && v !== null && !(Array.isArray(v) && !v.length))
    .sort(([a], [b]) => (a === 'type' ? -1 : b === 'type' ? 1 : 0));
  const label = p.name ? `${p.kind}:${p.name}` : p.kind;
  return details.length ? `${label} (${details.map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(', ') : typeof v === 'object' ? JSON.stringify(v) : v}`).join('; ')})` : label;
}

async function routes() {
  const [table_, live, mirrors] = await Promise.all([get('/routes'), get('/live?minutes=5'), get('/mirrors')]);
  const rows = table_.routes.map((r) => {
    const f = live.routes[r.name] || { rps: 0, error_pct: 0, series: [] };
    const errCls = f.error_pct > 5 ? 'bad' : f.error_pct > 0 ? 'warn' : '';
    return el('tr', { 'data-route': r.name },
      el('td', {}, el('strong', {}, r.name), el('div', { class: 'muted' }, r.defined_at)),
      el('td', {}, el('code', {}, matchText(r.match))),
      el('td', {}, action(r.action)),
      el('td', {}, r.policy_details.map((p) => el('div', { class: 'policy' }, policyText(p)))),
      el('td', { class: 'num rps' }, fmt.num(f.rps, 2)),
      el('td', { class: `num errors ${errCls}` }, `${fmt.num(f.error_pct)} %`),
      el('td', { class: 'num client-errors' }, `${fmt.num(f.client_error_pct)} %`),
      el('td', { class: 'num p50' }, fmt.ms(f.p50_ms)),
      el('td', { class: 'num p99' }, fmt.ms(f.p99_ms)),
      el('td', {}, chart([0, 1, 2, 3].map((c) => ({ cls: `c${c + 2}`, values: byClass(f.series, c) })), 'spark', 32)));
  });
  const shadows = Object.entries(mirrors.routes).map(([name, m]) =>
    el('tr', {}, el('td', {}, name), el('td', {}, `${m.upstream} (${m.percent} %)`), el('td', { class: 'num' }, m.in_flight),
      el('td', { class: 'num' }, m.differences.length),
      el('td', {}, m.differences.length ? el('code', {}, JSON.stringify(m.differences[0])) : '–')));
  return [
    el('p', { class: 'muted' }, 'Figures over the last 5 minutes; the chart shows requests/s by status class (2xx green, 3xx blue, 4xx orange, 5xx red).'),
    table(['route', 'match', 'action', 'policies', 'req/s', '5xx', '4xx', 'p50', 'p99', 'last 5 min'], rows, 'routes'),
    shadows.length ? [el('h2', {}, 'Shadow traffic'), table(['route', 'shadow', 'in flight', 'differences kept', 'latest difference'], shadows, 'mirrors')] : [],
  ];
}

async function upstreams() {
  const u = await get('/upstreams');
  const rows = Object.entries(u.upstreams).flatMap(([name, up]) => up.targets.map((t) =>
    el('tr', { 'data-target': `${name}/${t.target}` },
      el('td', {}, name), el('td', {}, t.target, el('div', { class: 'muted' }, t.addresses.join(', '))),
      el('td', { class: t.healthy ? 'ok' : 'bad' }, t.healthy ? 'healthy' : 'unhealthy'),
      el('td', { class: `breaker ${t.breaker === 'closed' ? 'ok' : 'bad'}` }, t.breaker,
        t.breaker_open_for_ms !== null ? el('div', { class: 'muted' }, `for ${fmt.duration(Math.round(t.breaker_open_for_ms / 1000))}`) : null),
      el('td', {}, t.ejected_for_ms ? `ejected ${fmt.duration(Math.round(t.ejected_for_ms / 1000))}` : 'no'),
      el('td', { class: 'num' }, t.in_flight),
      el('td', { class: 'num' }, t.latency_ms === null ? '–' : `${fmt.num(t.latency_ms)} ms`),
      el('td', { class: 'last-error' }, t.last_error ? `${t.last_error.what} (${fmt.ago(t.last_error.at_ms)})` : '–'))));
  return table(['upstream', 'target', 'health', 'breaker', 'ejected', 'in flight', 'latency', 'last error'], rows, 'upstreams');
}

let trafficRoute = '';

async function traffic() {
  const live = await get('/live?minutes=15');
  const f = trafficRoute ? live.routes[trafficRoute] : live.gateway;
  const choose = el('select', { id: 'traffic-route' }, el('option', { value: '' }, 'the whole gateway'),
    Object.keys(live.routes).map((r) => el('option', { value: r }, r)));
  choose.value = trafficRoute;
  choose.addEventListener('change', () => { trafficRoute = choose.value; refresh(); });
  const series = f ? f.series : [];
  return [
    el('p', {}, 'Show: ', choose, el('span', { class: 'muted' }, ` — the last 15 minutes in ${live.bucket_s} s buckets`)),
    el('div', { class: 'cards' }, card('req/s', fmt.num(f ? f.rps : 0, 2)), card('errors (5xx)', `${fmt.num(f ? f.error_pct : 0)} %`),
      card('p50', fmt.ms(f && f.p50_ms)), card('p99', fmt.ms(f && f.p99_ms))),
    el('h2', {}, 'Requests/s by status class'),
    el('div', { class: 'legend' }, el('span', { class: 's2' }, '2xx'), el('span', { class: 's3' }, '3xx'), el('span', { class: 's4' }, '4xx'), el('span', { class: 's5' }, '5xx')),
    chart([0, 1, 2, 3].map((c) => ({ cls: `c${c + 2}`, values: byClass(series, c) })), 'chart', 180, true),
    el('h2', {}, 'Latency (ms)'),
    el('div', { class: 'legend' }, el('span', {}, 'p50 violet'), el('span', {}, 'p99 pink')),
    chart([{ cls: 'p50', values: series.map((p) => p.p50_ms) }, { cls: 'p99', values: series.map((p) => p.p99_ms) }], 'chart', 180, true),
  ];
}

async function errors() {
  const e = await get('/errors');
  const rows = e.errors.map((x) =>
    el('tr', { 'data-request': x.request_id },
      el('td', {}, fmt.time(x.at_ms)), el('td', {}, el('code', {}, x.request_id)),
      el('td', {}, x.route || '–'), el('td', { class: `num s${String(x.status)[0]}` }, x.status),
      el('td', {}, x.code || '–'), el('td', {}, `${x.method} ${x.path}`),
      el('td', { class: 'reason' }, x.reason), el('td', {}, x.user || '–')));
  return [
    el('p', { class: 'muted' }, `The last ${e.kept} requests that failed, newest first.`),
    table(['time (UTC)', 'request id', 'route', 'status', 'code', 'request', 'why', 'user'], rows, 'errors'),
  ];
}

let explainState = { method: 'GET', path: '/', headers: '', text: '' };

async function explain() {
  const form = document.getElementById('explain-form').content.cloneNode(true);
  const f = form.getElementById('probe');
  f.method.value = explainState.method;
  f.path.value = explainState.path;
  f.headers.value = explainState.headers;
  form.getElementById('explanation').textContent = explainState.text;
  f.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    explainState = { method: f.method.value, path: f.path.value, headers: f.headers.value, text: '' };
    const q = new URLSearchParams({ method: explainState.method, path: explainState.path });
    explainState.headers.split('\n').map((h) => h.trim()).filter(Boolean).forEach((h) => q.append('header', h));
    const resp = await fetch(`/explain?${q}`);
    const body = await resp.json();
    explainState.text = resp.ok ? body.explanation : body.error.message;
    document.getElementById('explanation').textContent = explainState.text;
  });
  return form;
}

// The loop: the page named by the URL's hash, fetched now and every REFRESH_MS (but the
// Explain form, which changes only when asked).
async function refresh() {
  const asked = generation;
  const name = (location.hash || '#overview').slice(1);
  const page = pages[name] || overview;
  document.querySelectorAll('nav a').forEach((a) => a.classList.toggle('active', a.getAttribute('href') === `#${name}`));
  try {
    const content = await page();
    if (asked !== generation || (shown === name && name === 'explain')) return;
    const main = document.getElementById('page');
    main.replaceChildren(...[content].flat(3).filter(Boolean));
    main.dataset.page = name;
    shown = name;
    document.getElementById('status').textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    document.getElementById('status').textContent = `cannot reach the gateway: ${e.message}`;
  }
}

function start() {
  generation += 1;
  clearInterval(timer);
  shown = null;
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
}

window.addEventListener('hashchange', start);
start();
