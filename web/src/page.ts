// What every tab of the console is: a panel built once after login, told
// when it is shown, and disposed of at logout (stopping its timers and
// streams).

import type { Connection } from './client';
import { busy, h, type Child } from './dom';

export interface Page {
  /** Used in ids and the tab's data-tab attribute. */
  id: string;
  title: string;
  element: HTMLElement;
  shown?(): void;
  /** Stops the page's timers and streams; resolves once they ended. */
  dispose(): void | Promise<void>;
}

export type PageFactory = (connection: Connection) => Page;

/** Resource kinds as the node names them (busbar.v1.ResourceKind). */
export const KINDS = ['FOLDER', 'ROOM', 'WIRE', 'DATABASE', 'TIMESERIES', 'SERVICE', 'TRANSPORT'] as const;

/** Longest listing the console asks for and shows. */
export const MAX_LISTED = 2000;

export interface ResourceInfo {
  id: string;
  path: string;
  name: string;
  kind: string;
  owner: string;
  created_ms: number;
}

/** Every resource of `kind` below `/` the user can see, for pickers. */
export async function resourcesOfKind(connection: Connection, kind: string): Promise<ResourceInfo[]> {
  const listing = await connection.call('busbar.v1.Resources/List', { path: '/', recursive: true });
  const resources: ResourceInfo[] = listing.resources ?? [];
  return resources.filter((resource) => resource.kind === kind).slice(0, MAX_LISTED);
}

/** Fills a <datalist> with paths. */
export function fillDatalist(list: HTMLDataListElement, paths: string[]): void {
  list.replaceChildren(
    ...paths.map((path) => {
      const option = document.createElement('option');
      option.value = path;
      return option;
    }),
  );
}

/** A tab's panel: a section with the tab's heading, then `children`. */
export function panel(id: string, title: string, ...children: Child[]): HTMLElement {
  return h('section', { id: `page-${id}` }, h('h2', {}, title), ...children);
}

/** A form whose submit runs `action` with `button` disabled (a slow call
 * is not started twice) instead of reloading the page. */
export function actionForm(
  layout: 'inline' | 'stacked',
  button: HTMLButtonElement,
  action: () => Promise<unknown>,
  ...children: Child[]
): HTMLFormElement {
  const submit = (event: Event) => (event.preventDefault(), void busy(button, action));
  return h('form', { class: layout, onsubmit: submit }, ...children);
}

/** A tab with a resource picker: each time it is shown, `picker` is filled
 * with the paths of the resources of `kind` the user can see. */
export function pickerPage(
  connection: Connection,
  tab: { id: string; title: string; element: HTMLElement; kind: string; picker: HTMLDataListElement; dispose?: () => void | Promise<void> },
): Page {
  const fill = (found: ResourceInfo[]) => fillDatalist(tab.picker, found.map((r) => r.path));
  return {
    id: tab.id,
    title: tab.title,
    element: tab.element,
    shown: () => void resourcesOfKind(connection, tab.kind).then(fill, () => undefined),
    dispose: tab.dispose ?? (() => {}),
  };
}

/** A tab that lists its content the first time it is shown (its list
 * button lists again). */
export function listingPage(tab: { id: string; title: string; element: HTMLElement; list: () => Promise<void> }): Page {
  let listed = false;
  return {
    id: tab.id,
    title: tab.title,
    element: tab.element,
    shown: () => {
      if (!listed) {
        listed = true;
        void tab.list();
      }
    },
    dispose: () => {},
  };
}
