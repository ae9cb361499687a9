// Building DOM nodes. Every piece of data goes in as text (textContent or
// attribute values), never as HTML, so nothing the node or a peer sends can
// become markup or script.

export type Child = Node | string | number | null | undefined | false;
export type Attributes = Record<string, string | number | boolean | undefined | EventListener>;

/** An element with attributes (`on*` keys become listeners) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Attributes = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  setAttributes(element, attributes);
  append(element, children);
  return element;
}

const SVG = 'http://www.w3.org/2000/svg';

/** An SVG element with attributes and children. */
export function svg(tag: string, attributes: Attributes = {}, ...children: Child[]): SVGElement {
  const element = document.createElementNS(SVG, tag) as SVGElement;
  setAttributes(element, attributes);
  append(element, children);
  return element;
}

function setAttributes(element: Element, attributes: Attributes): void {
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === false) continue;
    if (typeof value === 'function') {
      element.addEventListener(name.replace(/^on/, ''), value);
    } else {
      element.setAttribute(name, value === true ? '' : String(value));
    }
  }
}

function append(element: Element, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces every child of `element`. */
export function replace(element: Element, ...children: Child[]): void {
  element.replaceChildren();
  append(element, children);
}

/** The element with `id`, which the page must have. */
export function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const element = document.getElementById(id);
  if (!element) throw new Error(`the page has no #${id}`);
  return element as T;
}

/** A message of an error for people: its code, when it has one, and text. */
export function describeError(error: unknown): string {
  if (error && typeof error === 'object') {
    const { code, message, traceId } = error as { code?: string; message?: string; traceId?: string };
    const text = message ?? String(error);
    const trace = traceId ? ` (trace ${traceId})` : '';
    return code ? `${code}: ${text}${trace}` : `${text}${trace}`;
  }
  return String(error);
}

/** A line that shows the outcome of the last action of a panel. */
export function statusLine(id: string): { element: HTMLElement; ok(text: string): void; fail(error: unknown): void; clear(): void } {
  const element = h('p', { id, class: 'outcome', role: 'status' });
  return {
    element,
    ok(text) {
      element.className = 'outcome ok';
      element.textContent = text;
    },
    fail(error) {
      element.className = 'outcome error';
      element.textContent = describeError(error);
    },
    clear() {
      element.className = 'outcome';
      element.textContent = '';
    },
  };
}

/** Runs `action` with `button` disabled, so a slow call is not started twice. */
export async function busy<T>(button: HTMLButtonElement, action: () => Promise<T>): Promise<T> {
  button.disabled = true;
  try {
    return await action();
  } finally {
    button.disabled = false;
  }
}
