// Status: the node's busbar.v1.Node/Status, polled, with small live
// charts of the numbers that move.

import { Sparkline } from '../charts';
import { h, replace, statusLine } from '../dom';
import type { Page, PageFactory } from '../page';

const POLL_MS = 2000;

export const statusPage: PageFactory = (connection) => {
  const facts = h('dl', { id: 'status-facts', class: 'facts' });
  const nodes = h('div', { id: 'status-nodes' });
  const outcome = statusLine('status-outcome');
  const charts = {
    connections: new Sparkline('connections', ''),
    roundTrip: new Sparkline('status round trip', 'ms'),
    callsPerSecond: new Sparkline('calls/s', ''),
    errors: new Sparkline('errors/s', ''),
    nodes: new Sparkline('cluster nodes', ''),
  };
  const element = h(
    'section',
    { id: 'page-status' },
    h('h2', {}, 'Node status'),
    outcome.element,
    facts,
    h('div', { class: 'sparks' }, ...Object.values(charts).map((chart) => chart.element)),
    h(
      'p',
      { class: 'note' },
      'Calls/s and errors/s are the whole node’s, from its call counters; by method and code they are on its Prometheus endpoint (the “metrics:” line of busbar serve).',
    ),
    h('h3', {}, 'Nodes sharing the store'),
    nodes,
  );

  // The node's call counters at the last poll: rates are their growth.
  let last: { at: number; calls: number; errors: number } | null = null;

  let inFlight = false;
  const poll = async () => {
    if (inFlight) return;
    inFlight = true;
    const started = performance.now();
    try {
      const status = await connection.call('busbar.v1.Node/Status', {}, { timeout: 10_000 });
      const roundTrip = performance.now() - started;
      showFacts(status);
      charts.connections.push(Number(status.connections ?? 0));
      charts.roundTrip.push(roundTrip);
      charts.nodes.push((status.nodes ?? []).length);
      const sample = { at: performance.now(), calls: Number(status.calls_total ?? 0), errors: Number(status.call_errors_total ?? 0) };
      if (last) {
        const seconds = Math.max(sample.at - last.at, 1) / 1000;
        charts.callsPerSecond.push((sample.calls - last.calls) / seconds);
        charts.errors.push((sample.errors - last.errors) / seconds);
      }
      last = sample;
      outcome.clear();
    } catch (error) {
      outcome.fail(error);
    } finally {
      inFlight = false;
    }
  };

  const showFacts = (status: any) => {
    const rows: [string, string][] = [
      ['version', String(status.version)],
      ['node id', String(status.node_id)],
      ['uptime', formatDuration(Number(status.uptime_ms ?? 0))],
      ['store', `${status.store} (${status.store_healthy ? 'healthy' : 'UNREACHABLE'})`],
      ['bus', `${status.bus} (${status.bus_healthy ? 'healthy' : 'UNREACHABLE'})`],
      ['TLS', status.tls ? 'yes' : 'no'],
      ['connections', String(status.connections)],
      ['calls', `${status.calls_total} (${status.call_errors_total} failed)`],
    ];
    replace(facts, ...rows.flatMap(([name, value]) => [h('dt', {}, name), h('dd', { 'data-fact': name }, value)]));
    const cluster = (status.nodes ?? []) as any[];
    replace(
      nodes,
      h(
        'table',
        { class: 'result' },
        h('thead', {}, h('tr', {}, h('th', {}, 'node'), h('th', {}, 'address'), h('th', {}, 'connections'), h('th', {}, 'started'), h('th', {}, 'last seen'))),
        h(
          'tbody',
          {},
          ...cluster.map((node) =>
            h(
              'tr',
              {},
              h('td', {}, String(node.node_id)),
              h('td', {}, String(node.address)),
              h('td', {}, String(node.connections)),
              h('td', {}, new Date(Number(node.started_ms)).toISOString()),
              h('td', {}, new Date(Number(node.seen_ms)).toISOString()),
            ),
          ),
        ),
      ),
    );
  };

  void poll();
  const timer = setInterval(() => void poll(), POLL_MS);
  const page: Page = {
    id: 'status',
    title: 'Status',
    element,
    dispose: () => clearInterval(timer),
  };
  return page;
};

function formatDuration(ms: number): string {
  const seconds = Math.floor(ms / 1000);
  const parts = [
    [Math.floor(seconds / 86400), 'd'],
    [Math.floor((seconds % 86400) / 3600), 'h'],
    [Math.floor((seconds % 3600) / 60), 'm'],
    [seconds % 60, 's'],
  ] as const;
  return parts.filter(([value], index) => value > 0 || index === 3).map(([value, unit]) => `${value}${unit}`).join(' ');
}
