// The console's entry: the login form, then one tab per page. The
// connection lives in this module's memory only; logging out or closing the
// page forgets it (nothing is written to storage or cookies).

import { connect, type Connection, type Credentials } from './client';
import { byId, describeError, h, replace } from './dom';
import type { Page, PageFactory } from './page';
import { statusPage } from './pages/status';
import { resourcesPage } from './pages/resources';
import { roomsPage } from './pages/rooms';
import { wiresPage } from './pages/wires';
import { sqlPage } from './pages/sql';
import { seriesPage } from './pages/series';
import { meshPage } from './pages/mesh';

const PAGES: PageFactory[] = [statusPage, resourcesPage, roomsPage, wiresPage, sqlPage, seriesPage, meshPage];

interface Session {
  connection: Connection;
  pages: Page[];
}

let session: Session | null = null;

function start(): void {
  const form = byId<HTMLFormElement>('login');
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    void logIn(form);
  });
  byId('logout').addEventListener('click', () => void logOut());
}

async function logIn(form: HTMLFormElement): Promise<void> {
  const user = byId<HTMLInputElement>('login-user');
  const password = byId<HTMLInputElement>('login-password');
  const token = byId<HTMLInputElement>('login-token');
  const error = byId('login-error');
  const submit = byId<HTMLButtonElement>('login-submit');
  const credential: Credentials | null = token.value
    ? { token: token.value }
    : user.value && password.value
      ? { user: user.value, password: password.value }
      : null;
  if (!credential) {
    error.textContent = 'Give a user and password, or an API token.';
    return;
  }
  submit.disabled = true;
  error.textContent = '';
  try {
    const connection = await connect(credential);
    // The form's secrets are not needed again: clear them from the page.
    password.value = '';
    token.value = '';
    form.hidden = true;
    open(connection);
  } catch (failure) {
    error.textContent = describeError(failure);
  } finally {
    submit.disabled = false;
  }
}

function open(connection: Connection): void {
  const state = byId('connection-state');
  connection.on('disconnected', () => {
    state.className = 'warning';
    state.textContent = 'Connection lost: reconnecting…';
  });
  connection.on('reconnected', () => {
    state.className = '';
    state.textContent = '';
  });
  const pages = PAGES.map((factory) => factory(connection));
  session = { connection, pages };
  const main = byId('main');
  const tabs = byId('tabs');
  for (const page of pages) {
    page.element.hidden = true;
    page.element.classList.add('page');
    main.append(page.element);
  }
  replace(
    tabs,
    ...pages.map((page) => h('button', { type: 'button', 'data-tab': page.id, onclick: () => showPage(page.id) }, page.title)),
  );
  tabs.hidden = false;
  const identity = connection.identity ?? {};
  byId('identity').textContent = `${identity.name ?? '?'}${identity.admin ? ' (admin)' : ''}`;
  byId('logout').hidden = false;
  showPage(location.hash.slice(1) || 'status');
}

function showPage(id: string): void {
  if (!session) return;
  const page = session.pages.find((candidate) => candidate.id === id) ?? session.pages[0];
  for (const other of session.pages) other.element.hidden = other !== page;
  for (const tab of byId('tabs').querySelectorAll('button')) {
    tab.classList.toggle('active', tab.dataset.tab === page.id);
  }
  history.replaceState(null, '', `#${page.id}`);
  page.shown?.();
}

async function logOut(): Promise<void> {
  const current = session;
  session = null;
  if (!current) return;
  // Pages end their rooms and streams first, while the connection is open.
  await Promise.allSettled(current.pages.map((page) => page.dispose()));
  for (const page of current.pages) page.element.remove();
  await Promise.resolve(current.connection.close()).catch(() => undefined);
  replace(byId('tabs'));
  byId('tabs').hidden = true;
  byId('identity').textContent = '';
  byId('logout').hidden = true;
  byId('connection-state').textContent = '';
  byId('login').hidden = false;
}

start();
