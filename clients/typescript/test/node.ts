// A real `busbar serve` node for the tests, on loopback with free ports and
// a temp data dir, as tests/python/conftest.py's run_node starts one.
// The binary is $BUSBAR_BIN, else <repo>/target/debug/busbar.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, existsSync, closeSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** How long a node may take to print "serving on". */
const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;

const here = fileURLToPath(new URL('.', import.meta.url));
// build-test/test/ -> clients/typescript -> repo root
export const PACKAGE_ROOT = resolve(here, '..', '..');
export const REPO_ROOT = resolve(PACKAGE_ROOT, '..', '..');

export function busbarBin(): string {
  const path = process.env.BUSBAR_BIN || join(REPO_ROOT, 'target', 'debug', 'busbar');
  if (!existsSync(path)) throw new Error(`busbar binary not found at ${path}: run \`cargo build -p busbar\` or set BUSBAR_BIN`);
  return path;
}

/** The environment without BUSBAR_* variables, which every flag of `busbar` reads. */
export function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) if (!key.startsWith('BUSBAR_')) env[key] = value;
  return { ...env, ...extra };
}

export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as { port: number }).port;
      server.close(() => resolvePort(port));
    });
  });
}

export interface Admin {
  address: string;
  ca_pem: string;
  credential: { kind: string; user: string; password: string };
}

export class TestNode {
  process!: ChildProcess;
  stdout: string[] = [];
  admin!: Admin;
  websocket = '';

  private constructor(
    readonly dataDir: string,
    readonly grpcPort: number,
    readonly wsPort: number,
    readonly extraArgs: string[],
  ) {}

  /** A node with data in `dataDir` (default: a fresh temp dir). */
  static async start(extraArgs: string[] = [], dataDir = join(mkdtempSync(join(tmpdir(), 'busbar-ts-')), 'data')): Promise<TestNode> {
    const node = new TestNode(dataDir, await freePort(), await freePort(), extraArgs);
    await node.run();
    return node;
  }

  get password(): string {
    return this.admin.credential.password;
  }

  get ca(): string {
    return this.admin.ca_pem;
  }

  /** Starts the process (again: same ports, same data). */
  async run(): Promise<void> {
    const args = [
      'serve',
      '--data', this.dataDir,
      '--listen', `127.0.0.1:${this.grpcPort}`,
      '--metrics-listen', '127.0.0.1:0',
      '--ws-listen', `127.0.0.1:${this.wsPort}`,
      '--grace', '0.2',
      ...this.extraArgs,
    ];
    // stderr to a file: a chatty log can never fill a pipe and block the node.
    const stderr = openSync(`${this.dataDir}.stderr.log`, 'a');
    this.process = spawn(busbarBin(), args, { stdio: ['ignore', 'pipe', stderr], env: cleanEnv() });
    closeSync(stderr);
    this.stdout = [];
    await new Promise<void>((ready, failed) => {
      const timer = setTimeout(() => failed(new Error(`busbar serve did not print 'serving on' in time\n${this.log()}`)), START_TIMEOUT_MS);
      let pending = '';
      this.process.stdout!.setEncoding('utf8');
      this.process.stdout!.on('data', (piece: string) => {
        pending += piece;
        const lines = pending.split('\n');
        pending = lines.pop()!;
        for (const line of lines) {
          this.stdout.push(line);
          const ws = /^websocket: (\S+)/.exec(line);
          if (ws) this.websocket = ws[1]!;
          // The banner, then the gateway's address: the node is serving.
          if (ws) {
            clearTimeout(timer);
            ready();
          }
        }
      });
      this.process.once('exit', (code) => {
        clearTimeout(timer);
        failed(new Error(`busbar serve exited with ${code} before serving\n${this.log()}`));
      });
    });
    this.admin = JSON.parse(readFileSync(join(this.dataDir, 'admin.json'), 'utf8'));
    if (!this.websocket) throw new Error(`no websocket line in\n${this.stdout.join('\n')}`);
  }

  log(): string {
    let stderr = '';
    try {
      stderr = readFileSync(`${this.dataDir}.stderr.log`, 'utf8');
    } catch {
      // not written yet
    }
    return `--- stdout ---\n${this.stdout.join('\n')}\n--- stderr ---\n${stderr}`;
  }

  /** SIGKILL: the node goes without a goodbye to its clients, as in a crash. */
  async kill(): Promise<void> {
    await this.stopWith('SIGKILL');
  }

  async stop(): Promise<void> {
    await this.stopWith('SIGTERM');
  }

  private async stopWith(signal: NodeJS.Signals): Promise<void> {
    const proc = this.process;
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((done) => proc.once('exit', () => done()));
    proc.kill(signal);
    const timer = setTimeout(() => proc.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await exited;
    clearTimeout(timer);
  }

  /** `busbar --config <admin.json> ARGS`: its stdout. */
  async cli(...args: string[]): Promise<string> {
    const child = spawn(busbarBin(), ['--config', join(this.dataDir, 'admin.json'), ...args], { env: cleanEnv() });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    const code = await new Promise<number | null>((done) => child.once('exit', done));
    if (code !== 0) throw new Error(`busbar ${args.join(' ')}: ${err}`);
    return out;
  }
}

/** Retries `check` until it passes or `ms` pass. */
export async function eventually<T>(what: string, check: () => Promise<T>, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      return await check();
    } catch (error) {
      last = error;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  throw new Error(`${what}: not within ${ms} ms: ${last}`);
}
