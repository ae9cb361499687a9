// Resources: the tree below a folder, each resource's grants, and creating
// and deleting resources (busbar.v1.Resources).

import { busy, h, replace, statusLine } from '../dom';
import { KINDS, MAX_LISTED, listingPage, panel, type PageFactory, type ResourceInfo } from '../page';

const RIGHTS = ['READ', 'WRITE', 'ADMIN'];
const RESOLUTIONS = ['BREAKPOINT', 'MIN1', 'MIN5', 'MIN10', 'MIN15', 'MIN30', 'HOUR', 'DAY', 'WEEK', 'MONTH', 'YEAR'];

interface TreeNode {
  resource?: ResourceInfo;
  name: string;
  children: Map<string, TreeNode>;
}

export const resourcesPage: PageFactory = (connection) => {
  const root = h('input', { id: 'res-root', value: connection.identity.admin ? '/' : (connection.identity.home ?? '/'), size: 40 });
  const listButton = h('button', { id: 'res-list', type: 'button' }, 'List');
  const tree = h('div', { id: 'res-tree', class: 'tree' });
  const listed = statusLine('res-listed');
  const details = h('div', { id: 'res-details' });

  const newPath = h('input', { id: 'res-new-path', placeholder: '/home/me/chat', size: 40 });
  const newKind = h('select', { id: 'res-new-kind' }, ...KINDS.filter((k) => k !== 'SERVICE' && k !== 'TRANSPORT').map((kind) => h('option', { value: kind }, kind)));
  const resolution = h('select', { id: 'res-new-resolution', hidden: true }, ...RESOLUTIONS.map((r) => h('option', { value: r, selected: r === 'HOUR' }, r)));
  const parents = h('input', { id: 'res-new-parents', type: 'checkbox', checked: true });
  const createButton = h('button', { id: 'res-create', type: 'submit' }, 'Create');
  const created = statusLine('res-created');
  newKind.addEventListener('change', () => {
    resolution.hidden = newKind.value !== 'TIMESERIES';
  });

  const list = async () => {
    try {
      const path = root.value.trim() || '/';
      const response = await connection.call('busbar.v1.Resources/List', { path, recursive: true });
      const resources: ResourceInfo[] = (response.resources ?? []).slice(0, MAX_LISTED);
      replace(tree, renderTree(buildTree(path, resources)));
      const more = (response.resources ?? []).length > MAX_LISTED ? ` (first ${MAX_LISTED} shown)` : '';
      listed.ok(`${resources.length} resources below ${path}${more}`);
    } catch (error) {
      replace(tree);
      listed.fail(error);
    }
  };

  const buildTree = (rootPath: string, resources: ResourceInfo[]): TreeNode => {
    const top: TreeNode = { name: rootPath, children: new Map() };
    const prefix = rootPath.endsWith('/') ? rootPath : `${rootPath}/`;
    for (const resource of resources) {
      const relative = resource.path.startsWith(prefix) ? resource.path.slice(prefix.length) : resource.path;
      let node = top;
      for (const segment of relative.split('/').filter(Boolean)) {
        let child = node.children.get(segment);
        if (!child) {
          child = { name: segment, children: new Map() };
          node.children.set(segment, child);
        }
        node = child;
      }
      node.resource = resource;
    }
    return top;
  };

  const renderTree = (node: TreeNode): HTMLElement => {
    const items = [...node.children.values()]
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((child) => {
        const resource = child.resource;
        const row = h(
          'li',
          { 'data-path': resource?.path ?? '', 'data-kind': resource?.kind ?? 'FOLDER' },
          h(
            'button',
            { type: 'button', class: 'link', onclick: () => resource && void select(resource) },
            child.name,
          ),
          ' ',
          h('span', { class: `kind kind-${(resource?.kind ?? 'folder').toLowerCase()}` }, resource?.kind ?? 'FOLDER'),
          resource ? h('span', { class: 'owner' }, ` owner ${resource.owner}`) : null,
          resource ? deleteButton(resource) : null,
        );
        if (child.children.size) row.append(renderTree(child));
        return row;
      });
    return h('ul', {}, ...items);
  };

  /** A delete that asks once more on the button itself (no dialog). */
  const deleteButton = (resource: ResourceInfo): HTMLButtonElement => {
    const button = h('button', { type: 'button', class: 'danger', 'data-action': 'delete' }, 'Delete');
    let armed = false;
    button.addEventListener('click', async () => {
      if (!armed) {
        armed = true;
        button.textContent = resource.kind === 'FOLDER' ? 'Delete it and all below?' : 'Really delete?';
        setTimeout(() => {
          armed = false;
          button.textContent = 'Delete';
        }, 4000);
        return;
      }
      await busy(button, async () => {
        try {
          const response = await connection.call('busbar.v1.Resources/Delete', { path: resource.path, recursive: resource.kind === 'FOLDER' });
          created.ok(`deleted ${response.deleted} resource(s) at ${resource.path}`);
          await list();
        } catch (error) {
          created.fail(error);
        }
      });
    });
    return button;
  };

  const select = async (resource: ResourceInfo) => {
    const principal = h('input', { placeholder: 'user or group:name', 'data-field': 'principal' });
    const right = h('select', { 'data-field': 'right' }, ...RIGHTS.map((r) => h('option', { value: r }, r)));
    const grantOutcome = statusLine('res-grant-outcome');
    const grants = h('tbody', {});
    const showGrants = async () => {
      try {
        const response = await connection.call('busbar.v1.Resources/ListGrants', { path: resource.path, effective: true });
        replace(
          grants,
          ...(response.grants ?? []).map((grant: any) =>
            h(
              'tr',
              {},
              h('td', {}, String(grant.principal)),
              h('td', {}, String(grant.right)),
              h('td', {}, grant.path === resource.path ? 'here' : `inherited from ${grant.path}`),
              h(
                'td',
                {},
                grant.path === resource.path
                  ? h('button', { type: 'button', onclick: () => void change('Revoke', String(grant.principal), String(grant.right)) }, 'Revoke')
                  : null,
              ),
            ),
          ),
        );
      } catch (error) {
        grantOutcome.fail(error);
      }
    };
    const change = async (method: 'Grant' | 'Revoke', who: string, what: string) => {
      try {
        await connection.call(`busbar.v1.Resources/${method}`, { path: resource.path, principal: who, right: what });
        grantOutcome.ok(`${method === 'Grant' ? 'granted' : 'revoked'} ${what} for ${who}`);
        await showGrants();
      } catch (error) {
        grantOutcome.fail(error);
      }
    };
    replace(
      details,
      h('h3', {}, resource.path),
      h(
        'dl',
        { class: 'facts' },
        h('dt', {}, 'kind'),
        h('dd', {}, resource.kind),
        h('dt', {}, 'id'),
        h('dd', {}, resource.id),
        h('dt', {}, 'owner'),
        h('dd', {}, resource.owner),
        h('dt', {}, 'created'),
        h('dd', {}, new Date(Number(resource.created_ms)).toISOString()),
      ),
      h('h4', {}, 'Grants'),
      h('table', { class: 'result', id: 'res-grants' }, h('thead', {}, h('tr', {}, h('th', {}, 'principal'), h('th', {}, 'right'), h('th', {}, 'set'), h('th', {}))), grants),
      h(
        'form',
        {
          class: 'inline',
          onsubmit: (event: Event) => {
            event.preventDefault();
            if (principal.value.trim()) void change('Grant', principal.value.trim(), right.value);
          },
        },
        principal,
        right,
        h('button', { type: 'submit' }, 'Grant'),
      ),
      grantOutcome.element,
    );
    await showGrants();
  };

  const createForm = h(
    'form',
    {
      id: 'res-create-form',
      class: 'inline',
      onsubmit: (event: Event) => {
        event.preventDefault();
        void busy(createButton, async () => {
          const request: Record<string, unknown> = { path: newPath.value.trim(), kind: newKind.value, parents: parents.checked };
          if (newKind.value === 'TIMESERIES') request.series = { resolution: resolution.value };
          try {
            const resource = await connection.call('busbar.v1.Resources/Create', request);
            created.ok(`created ${resource.kind} ${resource.path}`);
            await list();
          } catch (error) {
            created.fail(error);
          }
        });
      },
    },
    h('label', {}, 'Path ', newPath),
    h('label', {}, 'Kind ', newKind),
    resolution,
    h('label', {}, parents, ' create parents'),
    createButton,
  );

  listButton.addEventListener('click', () => void busy(listButton, list));
  const element = panel(
    'resources',
    'Resources',
    h('div', { class: 'inline' }, h('label', {}, 'Below ', root), listButton),
    listed.element,
    h('div', { class: 'columns' }, tree, details),
    h('h3', {}, 'Create a resource'),
    createForm,
    created.element,
  );
  return listingPage({ id: 'resources', title: 'Resources', element, list });
};
