// Small hand-drawn SVG charts: a plot of a time series (every point a
// marker the tests can count) and sparklines for live numbers.

import { h, svg } from './dom';

export interface PlotPoint {
  /** Epoch milliseconds. */
  time: number;
  /** NaN for a point without a value (flag MISSING). */
  value: number;
  flags: number;
}

/** Markers are drawn for at most this many points; the line takes them all. */
export const MAX_MARKERS = 2000;

const WIDTH = 760;
const HEIGHT = 300;
const PAD = { left: 64, right: 16, top: 12, bottom: 36 };

/** A plot of `points` (sorted by time). `staircase`: a value holds until the next point. */
export function plotSeries(points: PlotPoint[], options: { staircase: boolean; unit: string }): SVGElement {
  const chart = svg('svg', {
    id: 'series-plot',
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: 'img',
    'aria-label': `plot of ${points.length} points`,
    'data-points': points.length,
  });
  const valued = points.filter((p) => Number.isFinite(p.value));
  if (points.length === 0) {
    chart.append(svg('text', { x: WIDTH / 2, y: HEIGHT / 2, 'text-anchor': 'middle', class: 'empty' }, 'no points in this interval'));
    return chart;
  }
  const t0 = points[0].time;
  const t1 = points[points.length - 1].time;
  let v0 = Math.min(...valued.map((p) => p.value));
  let v1 = Math.max(...valued.map((p) => p.value));
  if (!valued.length) [v0, v1] = [0, 1];
  if (v0 === v1) [v0, v1] = [v0 - 1, v1 + 1];
  const x = (t: number) => PAD.left + (t1 === t0 ? 0.5 : (t - t0) / (t1 - t0)) * (WIDTH - PAD.left - PAD.right);
  const y = (v: number) => HEIGHT - PAD.bottom - ((v - v0) / (v1 - v0)) * (HEIGHT - PAD.top - PAD.bottom);

  chart.append(axes(t0, t1, v0, v1, options.unit));
  chart.append(svg('path', { class: 'series-line', d: linePath(points, x, y, options.staircase) }));
  if (points.length <= MAX_MARKERS) {
    const markers = svg('g', { class: 'markers' });
    points.forEach((point, index) => {
      const missing = !Number.isFinite(point.value);
      markers.append(
        svg(
          'circle',
          {
            cx: x(point.time).toFixed(1),
            cy: (missing ? HEIGHT - PAD.bottom : y(point.value)).toFixed(1),
            r: 3,
            class: missing ? 'point missing' : point.flags ? 'point flagged' : 'point',
            'data-point': index,
            'data-time': new Date(point.time).toISOString(),
            'data-value': missing ? 'NaN' : point.value,
          },
          svg('title', {}, `${new Date(point.time).toISOString()}  ${missing ? 'missing' : point.value} ${options.unit}`),
        ),
      );
    });
    chart.append(markers);
  }
  return chart;
}

/** The path through the points with values; a missing point breaks the line. */
function linePath(points: PlotPoint[], x: (t: number) => number, y: (v: number) => number, staircase: boolean): string {
  const parts: string[] = [];
  let previous: PlotPoint | undefined;
  for (const point of points) {
    if (!Number.isFinite(point.value)) {
      previous = undefined;
      continue;
    }
    const px = x(point.time).toFixed(1);
    const py = y(point.value).toFixed(1);
    if (!previous) parts.push(`M${px},${py}`);
    else if (staircase) parts.push(`H${px}V${py}`);
    else parts.push(`L${px},${py}`);
    previous = point;
  }
  return parts.join('');
}

function axes(t0: number, t1: number, v0: number, v1: number, unit: string): SVGElement {
  const group = svg('g', { class: 'axes' });
  const bottom = HEIGHT - PAD.bottom;
  group.append(
    svg('line', { x1: PAD.left, y1: bottom, x2: WIDTH - PAD.right, y2: bottom }),
    svg('line', { x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: bottom }),
    svg('text', { x: PAD.left - 6, y: PAD.top + 10, 'text-anchor': 'end' }, formatNumber(v1)),
    svg('text', { x: PAD.left - 6, y: bottom, 'text-anchor': 'end' }, formatNumber(v0)),
    svg('text', { x: PAD.left, y: HEIGHT - 12 }, formatTime(t0)),
    svg('text', { x: WIDTH - PAD.right, y: HEIGHT - 12, 'text-anchor': 'end' }, formatTime(t1)),
  );
  if (unit) group.append(svg('text', { x: PAD.left + 6, y: PAD.top + 10 }, unit));
  return group;
}

function formatNumber(value: number): string {
  return Math.abs(value) >= 1e6 || (value !== 0 && Math.abs(value) < 1e-3) ? value.toExponential(2) : String(+value.toFixed(3));
}

function formatTime(ms: number): string {
  return new Date(ms).toISOString().replace('T', ' ').replace(/:00\.000Z$|\.000Z$/, 'Z');
}

/** A live number with its recent history: keeps the last `capacity` samples. */
export class Sparkline {
  readonly element: HTMLElement;
  private readonly samples: number[] = [];
  private readonly line: SVGElement;
  private readonly current: HTMLElement;

  constructor(
    readonly name: string,
    private readonly unit: string,
    private readonly capacity = 60,
  ) {
    this.line = svg('path', { class: 'spark-line', d: '' });
    this.current = h('span', { class: 'spark-value' }, '–');
    this.element = h(
      'figure',
      { class: 'spark', 'data-metric': name },
      h('figcaption', {}, name, ' ', this.current),
      svg('svg', { viewBox: '0 0 200 40', preserveAspectRatio: 'none' }, this.line),
    );
  }

  push(value: number): void {
    this.samples.push(value);
    if (this.samples.length > this.capacity) this.samples.shift();
    this.current.textContent = `${formatNumber(value)}${this.unit ? ' ' + this.unit : ''}`;
    const max = Math.max(...this.samples, 1e-9);
    const min = Math.min(...this.samples, 0);
    const step = 200 / Math.max(this.capacity - 1, 1);
    const offset = (this.capacity - this.samples.length) * step;
    this.line.setAttribute(
      'd',
      this.samples
        .map((sample, index) => {
          const px = offset + index * step;
          const py = 38 - ((sample - min) / (max - min || 1)) * 36;
          return `${index ? 'L' : 'M'}${px.toFixed(1)},${py.toFixed(1)}`;
        })
        .join(''),
    );
  }
}
