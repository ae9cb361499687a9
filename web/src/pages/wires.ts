// Wires: subscribe to one wire and watch its chunks (the last MAX_CHUNKS),
// and publish text into it.

import { h, replace, statusLine } from '../dom';
import type { Subscription } from '../client';
import { actionForm, panel, pickerPage, type PageFactory } from '../page';

const MAX_CHUNKS = 200;
/** Bytes of a chunk shown; the size says how long it was. */
const PREVIEW_BYTES = 256;

export const wiresPage: PageFactory = (connection) => {
  const wires = h('datalist', { id: 'wire-paths' });
  const path = h('input', { id: 'wire-path', list: 'wire-paths', placeholder: '/home/me/feed', size: 40 });
  const subscribeButton = h('button', { id: 'wire-subscribe', type: 'submit' }, 'Subscribe');
  const stopButton = h('button', { id: 'wire-stop', type: 'button', disabled: true }, 'Stop');
  const subscribed = statusLine('wire-subscribed');
  const chunks = h('ol', { id: 'wire-chunks', class: 'events', reversed: true });
  const text = h('input', { id: 'wire-publish-text', placeholder: 'text to publish', size: 40 });
  const publishButton = h('button', { id: 'wire-publish', type: 'submit' }, 'Publish');
  const published = statusLine('wire-published');

  let subscription: Subscription | null = null;
  let count = 0;
  let bytes = 0;
  const decoder = new TextDecoder('utf-8', { fatal: true });

  const show = (chunk: Uint8Array) => {
    count++;
    bytes += chunk.length;
    const head = chunk.subarray(0, PREVIEW_BYTES);
    let preview: string;
    try {
      preview = JSON.stringify(decoder.decode(head));
    } catch {
      preview = `0x${Array.from(head, (b) => b.toString(16).padStart(2, '0')).join('')}`;
    }
    chunks.prepend(
      h(
        'li',
        { 'data-bytes': chunk.length },
        h('time', {}, new Date().toISOString().slice(11, 23)),
        ` ${chunk.length} bytes `,
        h('code', {}, preview + (chunk.length > PREVIEW_BYTES ? '…' : '')),
      ),
    );
    while (chunks.childElementCount > MAX_CHUNKS) chunks.lastElementChild?.remove();
    subscribed.ok(`subscribed to ${path.value.trim()}: ${count} chunk(s), ${bytes} bytes`);
  };

  const stop = () => {
    const current = subscription;
    subscription = null;
    stopButton.disabled = true;
    current?.close();
  };

  const subscribe = async () => {
    stop();
    const target = path.value.trim();
    try {
      const current = await connection.subscribe(target);
      subscription = current;
      count = 0;
      bytes = 0;
      replace(chunks);
      stopButton.disabled = false;
      subscribed.ok(`subscribed to ${target}: waiting for chunks`);
      void (async () => {
        try {
          for await (const chunk of current) show(chunk);
          if (subscription === current) subscribed.ok(`the subscription to ${target} ended`);
        } catch (error) {
          if (subscription === current) subscribed.fail(error);
        }
      })();
    } catch (error) {
      subscribed.fail(error);
    }
  };

  const publish = async () => {
    try {
      const summary = await connection.publish(path.value.trim(), text.value);
      published.ok(`published ${summary?.chunks ?? 1} chunk(s), ${summary?.bytes ?? text.value.length} bytes`);
    } catch (error) {
      published.fail(error);
    }
  };

  stopButton.addEventListener('click', () => {
    stop();
    subscribed.ok('stopped');
  });
  const element = panel(
    'wires',
    'Wires',
    wires,
    actionForm(
      'inline',
      subscribeButton,
      subscribe,
      h('label', {}, 'Wire ', path),
      subscribeButton,
      stopButton,
    ),
    subscribed.element,
    actionForm('inline', publishButton, publish, text, publishButton),
    published.element,
    h('h3', {}, `Chunks (newest first, the last ${MAX_CHUNKS})`),
    chunks,
  );
  return pickerPage(connection, { id: 'wires', title: 'Wires', element, kind: 'WIRE', picker: wires, dispose: stop });
};
