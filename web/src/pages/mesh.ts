// Mesh: the services providers offer (busbar.v1.Mesh/ListServices) and a
// form to call one of their methods with a JSON request.

import { h, replace, statusLine } from '../dom';
import { actionForm, listingPage, panel, type PageFactory } from '../page';

export const meshPage: PageFactory = (connection) => {
  const folder = h('input', { id: 'mesh-path', value: '/services', size: 30 });
  const listButton = h('button', { id: 'mesh-list', type: 'submit' }, 'List');
  const listed = statusLine('mesh-listed');
  const services = h('div', { id: 'mesh-services' });
  const method = h('select', { id: 'mesh-method' });
  const request = h('textarea', { id: 'mesh-request', rows: 6, cols: 60, spellcheck: 'false' }, '{}');
  const callButton = h('button', { id: 'mesh-call', type: 'submit' }, 'Call');
  const called = statusLine('mesh-called');
  const response = h('pre', { id: 'mesh-response' });

  const list = async () => {
    try {
      const found = await connection.services(folder.value.trim());
      replace(
        services,
        h(
          'table',
          { class: 'result' },
          h('thead', {}, h('tr', {}, h('th', {}, 'service'), h('th', {}, 'methods'), h('th', {}, 'providers'))),
          h(
            'tbody',
            {},
            ...found.map((service) =>
              h(
                'tr',
                { 'data-service': String(service.name) },
                h('td', {}, String(service.name), h('br'), h('small', {}, String(service.path))),
                h('td', {}, service.methods.join(', ')),
                h(
                  'td',
                  {},
                  h(
                    'ul',
                    {},
                    ...service.providers.map((provider) =>
                      h(
                        'li',
                        {},
                        `${provider.identity} (${provider.id}) since ${new Date(Number(provider.since_unix_ms)).toISOString()}: ` +
                          `${provider.calls_in_flight} in flight, ${provider.calls_served} served${provider.draining ? ', draining' : ''}`,
                      ),
                    ),
                  ),
                ),
              ),
            ),
          ),
        ),
      );
      replace(
        method,
        ...found.flatMap((service) => service.methods.map((name) => h('option', { value: `${service.name}/${name}` }, `${service.name}/${name}`))),
      );
      listed.ok(`${found.length} service(s) with live providers`);
    } catch (error) {
      listed.fail(error);
    }
  };

  const call = async () => {
    let message: unknown;
    try {
      message = JSON.parse(request.value || '{}');
    } catch (error) {
      called.fail(`the request is not JSON: ${(error as Error).message}`);
      return;
    }
    const started = performance.now();
    try {
      const reply = await connection.call(method.value, message as object, { timeout: 30_000 });
      response.textContent = JSON.stringify(reply, (_key, value) => (typeof value === 'bigint' ? value.toString() : value), 2);
      called.ok(`${method.value} answered in ${Math.round(performance.now() - started)} ms`);
    } catch (error) {
      response.textContent = '';
      called.fail(error);
    }
  };

  const element = panel(
    'mesh',
    'Mesh services',
    actionForm('inline', listButton, list, h('label', {}, 'Below ', folder), listButton),
    listed.element,
    services,
    h('h3', {}, 'Call a method'),
    actionForm('stacked', callButton, call, method, request, h('div', {}, callButton)),
    called.element,
    response,
  );
  return listingPage({ id: 'mesh', title: 'Mesh', element, list });
};
