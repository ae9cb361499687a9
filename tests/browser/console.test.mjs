// The web console in a real browser against a real node: log in, create a
// room and see a Python client's event arrive live, run SQL and read the
// table (and its CSV), plot a time series and count its points. Each step
// leaves a screenshot in artifacts/ when it fails.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { openBrowser, python, pythonProcess, startNode, withScreenshot } from './harness.mjs';

const ROOT = '/console-test';
let node;
let browser;
let page;
let problems;

before(async () => {
  node = await startNode();
  ({ browser, page, problems } = await openBrowser());
});

after(async () => {
  await browser?.close();
  await node?.stop();
});

/** `step` as a test whose failure leaves a screenshot. */
function step(name, body) {
  test(name, () => withScreenshot(page, name, body));
}

/** Waits until the element `selector` has text matching `pattern`. */
async function textMatches(selector, pattern, timeout = 15_000) {
  await page.waitForFunction(
    ([selector, source, flags]) => new RegExp(source, flags).test(document.querySelector(selector)?.textContent ?? ''),
    [selector, pattern.source, pattern.flags],
    { timeout },
  );
  return page.textContent(selector);
}

async function openTab(id) {
  await page.click(`#tabs button[data-tab="${id}"]`);
  await page.waitForSelector(`#page-${id}:not([hidden])`);
}

step('the node serves the console with its security headers', async () => {
  const request = page.context().request;
  const index = await request.get(node.consoleUrl);
  assert.equal(index.status(), 200);
  const headers = index.headers();
  assert.match(headers['content-type'], /^text\/html/);
  assert.equal(headers['x-content-type-options'], 'nosniff');
  assert.equal(headers['x-frame-options'], 'DENY');
  assert.match(headers['content-security-policy'], /default-src 'none'/);
  assert.match(headers['content-security-policy'], /connect-src 'self' wss:\/\/127\.0\.0\.1:\d+;/);
  assert.match(await index.text(), /<script type="module" src="\/app.js">/, 'the built console, not the "not built" page');
  const script = await request.get(new URL('/app.js', node.consoleUrl).href);
  assert.match(script.headers()['content-type'], /^text\/javascript/);
  const again = await request.get(new URL('/app.js', node.consoleUrl).href, { headers: { 'if-none-match': script.headers().etag } });
  assert.equal(again.status(), 304);
  const head = await request.fetch(node.consoleUrl, { method: 'HEAD' });
  assert.equal(head.status(), 200);
  assert.equal((await request.fetch(node.consoleUrl, { method: 'POST', data: 'x' })).status(), 405);
  assert.equal((await request.get(new URL('/../Cargo.toml', node.consoleUrl).href)).status(), 404);
  assert.equal((await request.get(new URL('/%2e%2e/Cargo.toml', node.consoleUrl).href)).status(), 404);
});

step('logs in with the admin password and keeps no credential in storage', async () => {
  await page.goto(node.consoleUrl);
  await page.fill('#login-user', node.admin.credential.user);
  await page.fill('#login-password', node.admin.credential.password);
  await page.click('#login-submit');
  await textMatches('#identity', /admin/);
  await textMatches('#status-facts', /node id/);
  // The node's own call counters (its login and status calls at least).
  await textMatches('dd[data-fact="calls"]', /^[1-9]\d* \(\d+ failed\)$/);
  // The status charts draw from the first poll on.
  await page.waitForSelector('figure[data-metric="connections"] path[d^="M"]', { state: 'attached' });
  const stored = await page.evaluate(() => ({ local: localStorage.length, session: sessionStorage.length, cookie: document.cookie }));
  assert.deepEqual(stored, { local: 0, session: 0, cookie: '' });
  assert.equal(await page.inputValue('#login-password'), '', 'the password is cleared from the form');
  assert.equal(await page.isVisible('#login'), false, 'the login form is gone');
});

step('creates a room in the resource tree', async () => {
  await openTab('resources');
  await page.fill('#res-new-path', `${ROOT}/lobby`);
  await page.selectOption('#res-new-kind', 'ROOM');
  await page.click('#res-create');
  await textMatches('#res-created', /created ROOM \/console-test\/lobby/);
  await page.waitForSelector(`#res-tree li[data-path="${ROOT}/lobby"][data-kind="ROOM"]`);
});

step('shows a resource\'s grants, grants and revokes a right, and deletes a resource', async () => {
  await python(node, `conn.create_user('viewer', 'viewer-password-1')`);
  await page.click(`#res-tree li[data-path="${ROOT}/lobby"] > button.link`);
  await textMatches('#res-grants', /admin\s*ADMIN\s*inherited from \//);
  await page.fill('#res-details input[data-field="principal"]', 'viewer');
  await page.selectOption('#res-details select[data-field="right"]', 'READ');
  await page.click('#res-details button[type="submit"]');
  await textMatches('#res-grants', /viewer\s*READ\s*here/);
  await page.click('#res-grants tr:has-text("viewer") button');
  await textMatches('#res-grant-outcome', /revoked READ for viewer/);
  assert.doesNotMatch(await page.textContent('#res-grants'), /viewer/);

  await page.fill('#res-new-path', `${ROOT}/scratch`);
  await page.selectOption('#res-new-kind', 'WIRE');
  await page.click('#res-create');
  const scratch = `#res-tree li[data-path="${ROOT}/scratch"]`;
  await page.waitForSelector(scratch);
  await page.click(`${scratch} button[data-action="delete"]`);
  await textMatches(`${scratch} button[data-action="delete"]`, /Really delete\?/);
  await page.click(`${scratch} button[data-action="delete"]`);
  await textMatches('#res-created', /deleted 1 resource\(s\) at \/console-test\/scratch/);
  await page.waitForSelector(scratch, { state: 'detached' });
});

step('shows an event a Python client emits into the room, live, and emits one', async () => {
  await openTab('rooms');
  await page.fill('#room-path', `${ROOT}/lobby`);
  await page.click('#room-join');
  await textMatches('#room-joined', /waiting for events/);
  const delivered = await python(node, `print(conn.emit('${ROOT}/lobby', 'greeting', 'hello from python', 42))`);
  assert.equal(delivered.trim(), '1', 'the console is the room\'s one member');
  const event = await page.waitForSelector('#room-events li[data-event="greeting"]');
  const text = await event.textContent();
  assert.match(text, /\["hello from python",42\]/);
  assert.match(text, /from admin/);

  await page.fill('#room-emit-event', 'reply');
  await page.fill('#room-emit-args', '["hi from the console"]');
  await page.click('#room-emit');
  await page.waitForSelector('#room-events li[data-event="reply"]');
  await textMatches('#room-emitted', /reached 1 member/);
});

/** Runs one statement in the SQL tab; resolves with the outcome line. */
async function runSql(sql) {
  await page.evaluate(() => {
    document.getElementById('sql-outcome').textContent = '';
  });
  await page.fill('#sql-text', sql);
  await page.click('#sql-run');
  await textMatches('#sql-outcome', /\S/);
  const outcome = await page.textContent('#sql-outcome');
  assert.match(outcome, /row\(s\)/, `the statement failed: ${outcome}`);
  return outcome;
}

step('runs SQL against a database, reads the table and exports it as CSV', async () => {
  await python(node, `conn.create('${ROOT}/db', 'database', parents=True)`);
  await openTab('sql');
  await page.fill('#sql-database', `${ROOT}/db`);
  await runSql('CREATE TABLE meters (id INTEGER PRIMARY KEY, name TEXT, reading REAL)');
  await runSql(`INSERT INTO meters (name, reading) VALUES ('north', 1.5), ('south', NULL), ('east, "quoted"', 3)`);
  assert.match(await runSql('SELECT id, name, reading FROM meters ORDER BY id'), /^3 row\(s\)/);
  const table = await page.$$eval('#sql-result table', ([table]) => ({
    head: [...table.tHead.rows[0].cells].map((cell) => cell.textContent),
    rows: [...table.tBodies[0].rows].map((row) => [...row.cells].map((cell) => cell.textContent)),
  }));
  assert.deepEqual(table.head, ['id', 'name', 'reading']);
  assert.deepEqual(table.rows, [
    ['1', 'north', '1.5'],
    ['2', 'south', 'NULL'],
    ['3', 'east, "quoted"', '3'],
  ]);
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#sql-csv')]);
  const csv = await readFile(await download.path(), 'utf8');
  assert.equal(csv, 'id,name,reading\r\n1,north,1.5\r\n2,south,\r\n3,"east, ""quoted""",3\r\n');
});

step('plots a time series with every point', async () => {
  await python(
    node,
    `import datetime as dt, pyarrow as pa
path = '${ROOT}/power'
conn.timeseries.create(path, resolution='hour', unit='MW', parents=True)
times = [dt.datetime(2026, 1, 1, h, tzinfo=dt.timezone.utc) for h in range(24)]
table = pa.table({'utc_time': pa.array(times, pa.timestamp('ms', tz='UTC')),
                  'value': [float(h * h) for h in range(24)]})
print(conn.timeseries.write(path, table)['points_written'])`,
  );
  await openTab('series');
  await page.fill('#series-path', `${ROOT}/power`);
  await page.selectOption('#series-interval', 'all');
  await page.click('#series-plot-button');
  await textMatches('#series-outcome', /24 point\(s\)/);
  const points = await page.$$eval('#series-plot circle[data-point]', (circles) =>
    circles.map((circle) => [circle.dataset.time, circle.dataset.value]),
  );
  assert.equal(points.length, 24);
  assert.deepEqual(points[0], ['2026-01-01T00:00:00.000Z', '0']);
  assert.deepEqual(points[23], ['2026-01-01T23:00:00.000Z', '529']);
  // The points climb: each marker sits higher (smaller y) than the one before.
  const heights = await page.$$eval('#series-plot circle[data-point]', (circles) => circles.map((c) => Number(c.getAttribute('cy'))));
  assert.ok(heights.every((y, i) => i === 0 || y < heights[i - 1]), `markers not rising: ${heights}`);

  await page.selectOption('#series-interval', 'custom');
  await page.fill('#series-from', '2026-01-01T06:00:00');
  await page.fill('#series-to', '2026-01-01T12:00:00');
  await page.click('#series-plot-button');
  await textMatches('#series-outcome', /^6 point\(s\)/);
  assert.equal(await page.locator('#series-plot circle[data-point]').count(), 6);
});

step('lists mesh services with their providers and calls a method from the JSON form', async () => {
  const provider = await pythonProcess(
    node,
    `import abc
@busbar.interface('mesh.console.Greeter')
class Greeter(abc.ABC):
    @busbar.method('greet')
    @abc.abstractmethod
    def greet(self, name: str) -> str: ...
class Friendly(Greeter):
    def greet(self, name):
        return f'hello {name}'
provider = conn.provide(Friendly())
print('ready', flush=True)
sys.stdin.read()
provider.close()
conn.close()`,
  );
  try {
    await openTab('mesh');
    await page.click('#mesh-list');
    const row = await page.waitForSelector('#mesh-services tr[data-service="mesh.console.Greeter"]');
    const text = await row.textContent();
    assert.match(text, /greet/);
    assert.match(text, /admin \(/, 'the provider is listed with its identity');
    await page.selectOption('#mesh-method', 'mesh.console.Greeter/greet');
    await page.fill('#mesh-request', '{"name": "console"}');
    await page.click('#mesh-call');
    await textMatches('#mesh-called', /answered in/);
    assert.deepEqual(JSON.parse(await page.textContent('#mesh-response')), { value: 'hello console' });
  } finally {
    await provider.stop();
  }
});

step('logs out: the login form is back and the pages are gone', async () => {
  await page.click('#logout');
  await page.waitForSelector('#login', { state: 'visible' });
  assert.equal(await page.isVisible('#tabs'), false);
  assert.equal(await page.locator('section.page').count(), 0);
  assert.equal(await page.textContent('#identity'), '');
});

step('the page raised no errors and broke no policy', async () => {
  assert.deepEqual(problems, []);
});
