// SQL: run one statement against a database and see the result as a table;
// export it as CSV.

import { busy, h, replace, statusLine } from '../dom';
import { download, MAX_SHOWN_ROWS, renderTable, toCsv, type ArrowTableLike } from '../table';
import { actionForm, panel, pickerPage, type PageFactory } from '../page';

export const sqlPage: PageFactory = (connection) => {
  const databases = h('datalist', { id: 'sql-databases' });
  const database = h('input', { id: 'sql-database', list: 'sql-databases', placeholder: '/home/me/db', size: 40 });
  const text = h('textarea', { id: 'sql-text', rows: 6, cols: 80, spellcheck: 'false', placeholder: 'SELECT 1  (Ctrl+Enter runs it)' });
  const runButton = h('button', { id: 'sql-run', type: 'submit' }, 'Run');
  const csvButton = h('button', { id: 'sql-csv', type: 'button', disabled: true }, 'Export CSV');
  const outcome = statusLine('sql-outcome');
  const result = h('div', { id: 'sql-result', class: 'scroll' });
  let last: ArrowTableLike | null = null;

  const run = async () => {
    const started = performance.now();
    try {
      const table = await connection.sql(database.value.trim(), text.value);
      last = table;
      csvButton.disabled = false;
      replace(result, renderTable(table));
      const shown = table.numRows > MAX_SHOWN_ROWS ? ` (first ${MAX_SHOWN_ROWS} shown; CSV has all)` : '';
      // A statement that changes rows says how many in the table's metadata.
      const affected = (table.schema as { metadata?: Map<string, string> }).metadata?.get('busbar.rows_affected');
      const changed = affected !== undefined && table.numRows === 0 ? `, ${affected} row(s) affected` : '';
      outcome.ok(`${table.numRows} row(s) in ${Math.round(performance.now() - started)} ms${changed}${shown}`);
    } catch (error) {
      last = null;
      csvButton.disabled = true;
      replace(result);
      outcome.fail(error);
    }
  };

  text.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      void busy(runButton, run);
    }
  });
  csvButton.addEventListener('click', () => {
    if (last) download('result.csv', toCsv(last));
  });
  const element = panel(
    'sql',
    'SQL',
    databases,
    actionForm(
      'stacked',
      runButton,
      run,
      h('label', {}, 'Database ', database),
      text,
      h('div', {}, runButton, ' ', csvButton),
    ),
    outcome.element,
    result,
  );
  return pickerPage(connection, { id: 'sql', title: 'SQL', element, kind: 'DATABASE', picker: databases });
};
