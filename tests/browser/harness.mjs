// What the console's browser tests stand on: a real `busbar serve` in a
// temp dir, the Python SDK to act as another client, and Debian's chromium
// driven by playwright-core (no browser of Playwright's own is downloaded).

import { spawn, execFile } from 'node:child_process';
import { mkdtemp, mkdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = fileURLToPath(new URL('.', import.meta.url));
const repo = resolve(here, '../..');

export const BUSBAR_BIN = process.env.BUSBAR_BIN ?? join(repo, 'target/debug/busbar');
/** A Python that has the `busbar` package (make: $(VENV)/bin/python). */
export const PYTHON = process.env.BUSBAR_PYTHON ?? join(repo, '.venv/bin/python');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
/** Screenshots of failed tests go here. */
export const ARTIFACTS = process.env.BROWSER_ARTIFACTS ?? join(here, 'artifacts');

const START_TIMEOUT_MS = 60_000;

/** The node's environment without BUSBAR_* settings of the caller's. */
function cleanEnv() {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('BUSBAR_')));
}

/**
 * Starts a node with its data in a fresh temp dir, on free ports; resolves
 * once it printed its console URL. `stop()` ends it and removes the dir.
 */
export async function startNode() {
  const dir = await mkdtemp(join(tmpdir(), 'busbar-console-'));
  const data = join(dir, 'data');
  const args = ['serve', '--data', data, '--listen', '127.0.0.1:0', '--metrics-listen', '127.0.0.1:0',
    '--ws-listen', '127.0.0.1:0', '--grace', '0.2'];
  const child = spawn(BUSBAR_BIN, args, { env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  const output = [];
  child.stderr.on('data', (chunk) => {
    // Keep the log's tail only: enough to explain a failure.
    output.push(String(chunk));
    if (output.length > 200) output.shift();
  });
  const lines = createInterface({ input: child.stdout });
  const consoleUrl = await new Promise((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`busbar serve printed no console URL within ${START_TIMEOUT_MS} ms\n${output.join('')}`)), START_TIMEOUT_MS);
    lines.on('line', (line) => {
      output.push(`${line}\n`);
      const match = /^console: (\S+)/.exec(line);
      if (match) {
        clearTimeout(timer);
        resolveUrl(match[1]);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`busbar serve exited with ${code} before serving\n${output.join('')}`));
    });
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${BUSBAR_BIN} (set BUSBAR_BIN, or run make test-browser): ${error.message}`));
    });
  });
  const adminPath = join(data, 'admin.json');
  const admin = JSON.parse(await readFile(adminPath, 'utf8'));
  return {
    consoleUrl,
    adminPath,
    admin,
    log: () => output.join(''),
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((done) => child.once('exit', done));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
        await exited;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

const run = promisify(execFile);

/**
 * Runs Python `code` with `conn`, a busbar.Connection logged in as the
 * node's admin (from admin.json), in scope; resolves with its stdout.
 */
export async function python(node, code) {
  const program = `import sys, busbar\nconn = busbar.Connection.from_config(sys.argv[1])\n${code}\nconn.close()\n`;
  const { stdout } = await run(PYTHON, ['-c', program, node.adminPath], { env: cleanEnv(), timeout: 60_000 });
  return stdout;
}

/** Debian's chromium, headless, trusting the node's own certificate. */
export async function openBrowser() {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const context = await browser.newContext({ ignoreHTTPSErrors: true, acceptDownloads: true });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
  });
  return { browser, context, page, problems };
}

/** Runs `body`; on failure saves a screenshot named after `name` and rethrows. */
export async function withScreenshot(page, name, body) {
  try {
    return await body();
  } catch (error) {
    await mkdir(ARTIFACTS, { recursive: true });
    const file = join(ARTIFACTS, `${name.replace(/[^a-z0-9]+/gi, '-')}.png`);
    await page.screenshot({ path: file, fullPage: true }).catch(() => undefined);
    error.message += `\n(screenshot: ${file})`;
    throw error;
  }
}

/**
 * Starts Python `code` (with `conn` as in `python`) as a process that runs
 * until `stop()`: the code prints `ready` once it serves, then reads its
 * standard input to the end (closing it is the signal to finish).
 */
export async function pythonProcess(node, code) {
  const program = `import sys, busbar\nconn = busbar.Connection.from_config(sys.argv[1])\n${code}\n`;
  const child = spawn(PYTHON, ['-c', program, node.adminPath], { env: cleanEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
  const errors = [];
  child.stderr.on('data', (chunk) => {
    errors.push(String(chunk));
    if (errors.length > 100) errors.shift();
  });
  await new Promise((ready, reject) => {
    const timer = setTimeout(() => reject(new Error(`the Python process was not ready within ${START_TIMEOUT_MS} ms\n${errors.join('')}`)), START_TIMEOUT_MS);
    createInterface({ input: child.stdout }).on('line', (line) => {
      if (line.trim() === 'ready') {
        clearTimeout(timer);
        ready();
      }
    });
    child.on('exit', (status) => {
      clearTimeout(timer);
      reject(new Error(`the Python process exited with ${status}\n${errors.join('')}`));
    });
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${PYTHON} (set BUSBAR_PYTHON): ${error.message}`));
    });
  });
  return {
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((done) => child.once('exit', done));
      child.stdin.end();
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
