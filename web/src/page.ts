// What every tab of the console is: a panel built once after login, told
// when it is shown, and disposed of at logout (stopping its timers and
// streams).

import type { ConnectionLike } from './client';

export interface Page {
  /** Used in ids and the tab's data-tab attribute. */
  id: string;
  title: string;
  element: HTMLElement;
  shown?(): void;
  /** Stops the page's timers and streams; resolves once they ended. */
  dispose(): void | Promise<void>;
}

export type PageFactory = (connection: ConnectionLike) => Page;

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
export async function resourcesOfKind(connection: ConnectionLike, kind: string): Promise<ResourceInfo[]> {
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
