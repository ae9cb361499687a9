// Showing an Arrow table (a SQL result) as an HTML table, and as CSV.
// Only the shape of apache-arrow's Table is used here (no import), so the
// bundle holds the one copy of Arrow that the client brings.

/** The parts of an apache-arrow Table the console reads. */
export interface ArrowTableLike {
  numRows: number;
  schema: { fields: { name: string; type: unknown }[] };
  getChildAt(index: number): { get(row: number): unknown } | null;
}

/** Rows shown in the page; CSV export takes every row. */
export const MAX_SHOWN_ROWS = 1000;

/** A cell as text: NULL is `null`, so the caller can tell it from "". */
export function cellText(value: unknown, type: unknown): string | null {
  if (value === null || value === undefined) return null;
  const typeName = String(type);
  if (/^Timestamp|^Date/.test(typeName) && (typeof value === 'number' || typeof value === 'bigint')) {
    const date = new Date(Number(value));
    return Number.isNaN(date.getTime()) ? String(value) : date.toISOString();
  }
  if (value instanceof Date) return value.toISOString();
  if (typeof value === 'bigint' || typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (typeof value === 'string') return value;
  if (value instanceof Uint8Array) return `0x${Array.from(value.subarray(0, 64), (b) => b.toString(16).padStart(2, '0')).join('')}${value.length > 64 ? '…' : ''}`;
  const json = (value as { toJSON?: () => unknown }).toJSON?.() ?? value;
  return JSON.stringify(json, (_key, inner) => (typeof inner === 'bigint' ? inner.toString() : inner));
}

/** The table's rows (at most MAX_SHOWN_ROWS) as a <table>. */
export function renderTable(table: ArrowTableLike): HTMLTableElement {
  const element = document.createElement('table');
  element.className = 'result';
  const fields = table.schema.fields;
  const head = element.createTHead().insertRow();
  for (const field of fields) {
    const th = document.createElement('th');
    th.textContent = field.name;
    th.title = String(field.type);
    head.append(th);
  }
  const body = element.createTBody();
  const columns = fields.map((_, index) => table.getChildAt(index));
  const shown = Math.min(table.numRows, MAX_SHOWN_ROWS);
  for (let row = 0; row < shown; row++) {
    const tr = body.insertRow();
    fields.forEach((field, index) => {
      const td = tr.insertCell();
      const text = cellText(columns[index]?.get(row), field.type);
      if (text === null) {
        td.className = 'null';
        td.textContent = 'NULL';
      } else {
        td.textContent = text;
      }
    });
  }
  return element;
}

/** The whole table as CSV (RFC 4180; NULL is an empty field). */
export function toCsv(table: ArrowTableLike): string {
  const fields = table.schema.fields;
  const columns = fields.map((_, index) => table.getChildAt(index));
  const lines = [fields.map((field) => csvField(field.name, false)).join(',')];
  for (let row = 0; row < table.numRows; row++) {
    lines.push(
      fields
        .map((field, index) => {
          const value = columns[index]?.get(row);
          return csvField(cellText(value, field.type) ?? '', typeof value === 'string');
        })
        .join(','),
    );
  }
  return lines.join('\r\n') + '\r\n';
}

function csvField(text: string, isString: boolean): string {
  // A text cell starting like a formula would run as one in a spreadsheet
  // opening the file: a leading quote keeps it text.
  const safe = isString && /^[=+\-@\t\r]/.test(text) ? `'${text}` : text;
  return /[",\r\n]/.test(safe) ? `"${safe.replaceAll('"', '""')}"` : safe;
}

/** Offers `text` as a file download named `name`. */
export function download(name: string, text: string, type = 'text/csv'): void {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = document.createElement('a');
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
