// Time series: pick a series and an interval, see its points plotted.

import { plotSeries, MAX_MARKERS, type PlotPoint } from '../charts';
import { h, replace, statusLine } from '../dom';
import { cellText, type ArrowTableLike } from '../table';
import { actionForm, panel, pickerPage, type PageFactory } from '../page';

const HOUR = 3_600_000;
const INTERVALS: [string, string, number][] = [
  ['all', 'all points', 0],
  ['hour', 'last hour', HOUR],
  ['day', 'last day', 24 * HOUR],
  ['week', 'last 7 days', 7 * 24 * HOUR],
  ['month', 'last 30 days', 30 * 24 * HOUR],
  ['custom', 'from … to … (UTC)', 0],
];

export const seriesPage: PageFactory = (connection) => {
  const seriesList = h('datalist', { id: 'series-paths' });
  const path = h('input', { id: 'series-path', list: 'series-paths', placeholder: '/home/me/wind', size: 40 });
  const interval = h('select', { id: 'series-interval' }, ...INTERVALS.map(([value, label]) => h('option', { value }, label)));
  const from = h('input', { id: 'series-from', type: 'datetime-local', step: 1, hidden: true });
  const to = h('input', { id: 'series-to', type: 'datetime-local', step: 1, hidden: true });
  const plotButton = h('button', { id: 'series-plot-button', type: 'submit' }, 'Plot');
  const outcome = statusLine('series-outcome');
  const plot = h('div', { id: 'series-chart' });

  interval.addEventListener('change', () => {
    from.hidden = to.hidden = interval.value !== 'custom';
  });

  /** [start, end) in epoch ms; undefined ends are the series' own. */
  const range = (): { start?: number; end?: number } => {
    const chosen = INTERVALS.find(([value]) => value === interval.value);
    if (interval.value === 'custom') {
      // datetime-local has no zone: the console reads it as UTC.
      const utc = (input: HTMLInputElement) => (input.value ? Date.parse(`${input.value}Z`) : undefined);
      return { start: utc(from), end: utc(to) };
    }
    if (!chosen || !chosen[2]) return {};
    const now = Date.now();
    return { start: now - chosen[2], end: now + 1 };
  };

  const draw = async () => {
    const target = path.value.trim();
    try {
      const info = await connection.call('busbar.v1.TimeSeries/Describe', { path: target });
      const table = await connection.readSeries(target, range());
      const points = toPoints(table);
      const spec = info.spec ?? {};
      replace(plot, plotSeries(points, { staircase: spec.curve !== 'PIECEWISE_LINEAR', unit: String(spec.unit ?? '') }));
      const markers = points.length > MAX_MARKERS ? ` (markers only up to ${MAX_MARKERS})` : '';
      outcome.ok(`${points.length} point(s) of ${target}, ${spec.resolution ?? ''} ${spec.unit ?? ''}${markers}`);
    } catch (error) {
      replace(plot);
      outcome.fail(error);
    }
  };

  const element = panel(
    'series',
    'Time series',
    seriesList,
    actionForm(
      'inline',
      plotButton,
      draw,
      h('label', {}, 'Series ', path),
      h('label', {}, 'Interval ', interval),
      from,
      to,
      plotButton,
    ),
    outcome.element,
    plot,
  );
  return pickerPage(connection, { id: 'series', title: 'Time series', element, kind: 'TIMESERIES', picker: seriesList });
};

/** A table of utc_time, flags, value as plot points. */
function toPoints(table: ArrowTableLike): PlotPoint[] {
  const names = table.schema.fields.map((field) => field.name);
  const column = (name: string) => table.getChildAt(names.indexOf(name));
  const times = column('utc_time');
  const flags = column('flags');
  const values = column('value');
  const timeType = table.schema.fields[names.indexOf('utc_time')]?.type;
  const points: PlotPoint[] = [];
  for (let row = 0; row < table.numRows; row++) {
    const time = Date.parse(cellText(times?.get(row), timeType) ?? '');
    const flag = Number(flags?.get(row) ?? 0);
    // MISSING (bit 1): the value is meaningless.
    const value = flag & 1 ? NaN : Number(values?.get(row));
    points.push({ time, value, flags: flag });
  }
  return points;
}
