// Rooms: join one room, watch its events live (the last MAX_EVENTS), and
// emit events into it.

import { busy, h, replace, statusLine } from '../dom';
import type { RoomEvent, Room } from '../client';
import { actionForm, panel, pickerPage, type PageFactory } from '../page';

/** Events kept in the list; older ones drop off the end. */
const MAX_EVENTS = 200;

export const roomsPage: PageFactory = (connection) => {
  const rooms = h('datalist', { id: 'room-paths' });
  const path = h('input', { id: 'room-path', list: 'room-paths', placeholder: '/home/me/chat', size: 40 });
  const joinButton = h('button', { id: 'room-join', type: 'submit' }, 'Join');
  const leaveButton = h('button', { id: 'room-leave', type: 'button', disabled: true }, 'Leave');
  const joined = statusLine('room-joined');
  const events = h('ol', { id: 'room-events', class: 'events', reversed: true });
  const eventName = h('input', { id: 'room-emit-event', placeholder: 'event name', value: 'message' });
  const eventArgs = h('textarea', { id: 'room-emit-args', rows: 3, cols: 50, placeholder: '["hello"]  (a JSON array of arguments)' });
  const emitButton = h('button', { id: 'room-emit', type: 'submit', disabled: true }, 'Emit');
  const emitted = statusLine('room-emitted');

  let room: Room | null = null;
  let received = 0;

  const show = (event: RoomEvent) => {
    received++;
    const args = Array.isArray(event.args) ? event.args : [];
    events.prepend(
      h(
        'li',
        { 'data-event': String(event.event ?? ''), 'data-kind': String(event.kind ?? '') },
        h('time', {}, new Date().toISOString().slice(11, 23)),
        ' ',
        event.kind === 'rejoined' ? h('em', {}, 'joined again after a reconnect (events meanwhile were missed)') : h('strong', { class: 'event-name' }, String(event.event ?? '')),
        ' ',
        h('code', { class: 'event-args' }, JSON.stringify(args, (_key, value) => (typeof value === 'bigint' ? value.toString() : value))),
        event.sender ? h('span', { class: 'sender' }, ` from ${event.sender}`) : null,
      ),
    );
    while (events.childElementCount > MAX_EVENTS) events.lastElementChild?.remove();
    joined.ok(`joined ${path.value.trim()}: ${received} event(s) received`);
  };

  const leave = async () => {
    const current = room;
    room = null;
    leaveButton.disabled = true;
    emitButton.disabled = true;
    if (current) await Promise.resolve(current.leave()).catch(() => undefined);
  };

  const join = async () => {
    await leave();
    const target = path.value.trim();
    try {
      const current = await connection.join(target);
      room = current;
      received = 0;
      replace(events);
      joined.ok(`joined ${target}: waiting for events`);
      leaveButton.disabled = false;
      emitButton.disabled = false;
      void (async () => {
        try {
          for await (const event of current) show(event);
          if (room === current) joined.ok(`the membership of ${target} ended (left, or the room was deleted)`);
        } catch (error) {
          if (room === current) joined.fail(error);
        }
        if (room === current) {
          room = null;
          leaveButton.disabled = true;
          emitButton.disabled = true;
        }
      })();
    } catch (error) {
      joined.fail(error);
    }
  };

  const emit = async () => {
    if (!room) return;
    let args: unknown[];
    try {
      const text = eventArgs.value.trim();
      const parsed = text ? JSON.parse(text) : [];
      args = Array.isArray(parsed) ? parsed : [parsed];
    } catch (error) {
      emitted.fail(`the arguments are not JSON: ${(error as Error).message}`);
      return;
    }
    try {
      const delivered = await room.emit(eventName.value.trim(), ...args);
      emitted.ok(`emitted ${eventName.value.trim()}: reached ${delivered} member(s)`);
    } catch (error) {
      emitted.fail(error);
    }
  };

  leaveButton.addEventListener('click', () => void busy(leaveButton, async () => {
    await leave();
    joined.ok('left');
  }));
  const element = panel(
    'rooms',
    'Rooms',
    rooms,
    actionForm(
      'inline',
      joinButton,
      join,
      h('label', {}, 'Room ', path),
      joinButton,
      leaveButton,
    ),
    joined.element,
    actionForm(
      'inline',
      emitButton,
      emit,
      eventName,
      eventArgs,
      emitButton,
    ),
    emitted.element,
    h('h3', {}, `Events (newest first, the last ${MAX_EVENTS})`),
    events,
  );
  return pickerPage(connection, { id: 'rooms', title: 'Rooms', element, kind: 'ROOM', picker: rooms, dispose: leave });
};
