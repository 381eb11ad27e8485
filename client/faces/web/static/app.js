/**
 * The chat page: a WebSocket to the client process for events and operations,
 * uploads by POST, downloads by link. Every string that came from a peer or a
 * file name reaches the DOM through textContent, never as HTML.
 *
 * @module
 */

const $ = (id) => document.getElementById(id);
const STALE_MS = 6_000; // no word from the client for this long: it is lost
const OPEN_TIMEOUT_MS = 5_000;
// A conversation keeps its last 1,000 items, so a page left open does not grow without end.
const MAX_ITEMS = 1_000;

/** The page's whole state; the DOM is drawn from it. */
const state = {
  me: "",
  peers: new Map(), // name → {trust, fingerprint, keyFingerprint}
  invitations: new Set(),
  offers: new Map(), // "from id" → a file offered to us, waiting for an answer
  convs: new Map(), // name → conversation
  selected: "",
  history: false,
  rooms: new Set(), // rooms we are in (#name)
  roomInvites: new Map(), // "creator #name" → {room, from}: two creators may name rooms alike
  cardErrors: new Map(), // list id → {key, text}: the failed button of a card, and why
  // name → the key changes seen for them, oldest first ({keyFingerprint, at, via}): a key other
  // than the one we trust, on a connection, a mailbox item or a room's list. Shown until that key
  // is trusted or the user dismisses it (the client keeps them across restarts), not only while
  // that connection lasts. Only names with one or more.
  keyChanges: new Map(),
};

/** Whether a conversation is a room (room names start with #). */
function isRoom(name) {
  return typeof name === "string" && name.startsWith("#");
}

/**
 * A peer's file name as shown: it is announced by the sender as is (docs/PROTOCOL.md §3), so
 * bidi controls, which would reorder it and what follows ("exe.txt" shown as "txt.exe"), and
 * control characters are dropped, as the terminal does.
 */
function shownName(name) {
  return String(name ?? "").replace(
    // deno-lint-ignore no-control-regex
    /[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c\u0000-\u001f\u007f-\u009f]/g,
    "",
  );
}

/**
 * The key of an item in its conversation: ids are chosen by their sender, so a peer's are
 * kept apart from ours and from other members', and its messages from its files (a reused id
 * must not replace another's item). Ours are unique (we chose them); a peer may send an id
 * again, and that item is kept under the key and its count (addItem), beside the first.
 */
function itemKey(from, id, kind) {
  return from === state.me ? id : `${from} ${kind} ${id}`;
}

/** A peer's file under `id` still on its way (its latest, not one finished before). */
function transfer(c, from, id) {
  const item = c.items.get(c.latest.get(itemKey(from, id, "file"))?.key);
  return item && !item.done ? item : undefined;
}

let ws;
let nextOp = 1;
const pending = new Map(); // op id → {resolve, reject}
let lastHeard = 0;
let linkUp = false;
let uploads = 0;
const earlyDelivered = new Map(); // id → ms, for a delivery that beats the reply

function conv(name) {
  let c = state.convs.get(name);
  if (!c) {
    c = {
      name,
      last: "",
      unread: 0,
      items: new Map(),
      latest: new Map(), // a peer's itemKey → {key, n}: its latest item and how many so far
      refs: new Map(), // ref → a peer's item (its ref the core's, or made for an old line)
      status: "",
      safety: "",
      loaded: false,
      node: null,
    };
    state.convs.set(name, c);
  }
  return c;
}

// ---------------------------------------------------------------------------
// The link to the client process

// The page key: in the fragment of the address the session exchange sends us to (never sent to a
// server), then in this tab's sessionStorage, which no other origin (another port) can read. The
// cookie alone is not enough: browsers send it to every port of 127.0.0.1.
const KEY_ITEM = "e2e-chat-key";
{
  const m = /^#key=([0-9a-f]{64})$/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(KEY_ITEM, m[1]);
    history.replaceState(null, "", location.pathname);
  }
}
const pageKey = sessionStorage.getItem(KEY_ITEM) ?? "";

function connect() {
  if (!pageKey) {
    setLink(false, "This tab has no key for the chat client: open the URL it printed.");
    return;
  }
  const socket = new WebSocket(`ws://${location.host}/ws`, ["e2e-chat", `key.${pageKey}`]);
  ws = socket;
  const opening = setTimeout(() => lost(socket), OPEN_TIMEOUT_MS);
  socket.onopen = () => {
    clearTimeout(opening);
    lastHeard = Date.now();
  };
  socket.onmessage = (m) => {
    lastHeard = Date.now();
    let event;
    try {
      event = JSON.parse(m.data);
    } catch {
      return;
    }
    handle(event);
  };
  socket.onclose = (ev) => {
    clearTimeout(opening);
    // 1001: the client stopped. Its session cannot come back (a new run has a new token), so
    // whatever answers on this port next is not it: no reconnection, and the key stays here.
    if (ev.code === 1001) over(socket);
    else lost(socket);
  };
}

function over(socket) {
  if (socket !== ws) return;
  socket.onclose = socket.onmessage = socket.onopen = null;
  ws = undefined;
  for (const { reject } of pending.values()) reject(new Error("The chat client stopped"));
  pending.clear();
  setLink(
    false,
    "The chat client stopped or restarted, which ends this session: open the URL it printed.",
  );
}

function lost(socket) {
  if (socket !== ws) return;
  socket.onclose = socket.onmessage = socket.onopen = null;
  try {
    socket.close();
  } catch { /* already closed */ }
  ws = undefined;
  for (const { reject } of pending.values()) reject(new Error("Lost the chat client"));
  pending.clear();
  setLink(false, "Lost the chat client process. Trying to reach it again…");
  // A 401 means this run is over (a restarted client has a new secret): say so.
  fetch("/app.js", { method: "HEAD", cache: "no-store" }).then((r) => {
    if (r.status === 401) {
      setLink(false, "The chat client restarted or ended this session: open the URL it printed.");
    }
  }, () => {});
  setTimeout(connect, 1_000);
}

setInterval(() => {
  if (ws && ws.readyState === WebSocket.OPEN && Date.now() - lastHeard > STALE_MS) lost(ws);
}, 1_000);

function setLink(up, message = "") {
  linkUp = up;
  const banner = $("link-state");
  banner.hidden = up;
  banner.textContent = message;
  document.body.classList.toggle("offline", !up);
  drawConversation();
}

/** Runs one operation in the client; resolves with its result or rejects with its error. */
function operate(op, fields) {
  return new Promise((resolve, reject) => {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      reject(new Error("Not connected to the chat client"));
      return;
    }
    const id = nextOp++;
    pending.set(id, { resolve, reject });
    ws.send(JSON.stringify({ id, op, ...fields }));
  });
}

function errorText(e) {
  const err = e?.error ?? e;
  const message = err?.message ?? String(e);
  return err?.hint ? `${message}: ${err.hint}` : message;
}

// ---------------------------------------------------------------------------
// Events from the client

function handle(e) {
  switch (e.type) {
    case "reply": {
      const p = pending.get(e.re);
      if (!p) return;
      pending.delete(e.re);
      if (e.ok) p.resolve(e.result);
      else p.reject(e);
      return;
    }
    case "alive":
      return;
    case "snapshot":
      return snapshot(e);
    case "invite":
      state.invitations.add(e.from);
      drawInvitations();
      notice(`${e.from} wants to chat`);
      return;
    case "invited":
      conv(e.to).status = `Invited ${e.to}: waiting for them to accept`;
      break;
    case "connected": {
      state.peers.set(e.peer, {
        trust: e.trust,
        fingerprint: e.fingerprint,
        keyFingerprint: e.keyFingerprint,
      });
      state.invitations.delete(e.peer);
      const c = conv(e.peer);
      c.status = e.trust === "changed"
        ? "Key changed: nothing is sent or shown until you trust the new key"
        : e.via === "relay"
        ? "Connected through the CA's relay"
        : "Connected";
      touch(c);
      if (!state.selected) select(e.peer);
      fetchSafety(e.peer);
      drawInvitations();
      break;
    }
    case "disconnected": {
      state.peers.delete(e.peer);
      conv(e.peer).status = `Disconnected: ${e.reason}`;
      break;
    }
    case "message":
      received(conv(e.from), e);
      break;
    case "sent":
    case "queued": {
      // With the text or file name (the history core adds them), another tab's sends show too.
      if (e.text === undefined && e.file === undefined) return;
      const c = conv(e.to);
      if (c.items.has(e.id) || [...c.items.values()].some((i) => i.transferId === e.id)) return;
      addItem(c, {
        id: e.id,
        from: state.me,
        to: e.to,
        at: new Date().toISOString(),
        kind: e.text !== undefined ? "message" : "file",
        text: e.text,
        file: e.file !== undefined ? { name: e.file } : undefined,
        state: "sent",
      });
      break;
    }
    case "delivered": {
      const item = conv(e.to).items.get(e.id);
      if (item) {
        item.state = "delivered";
        item.ms = e.ms;
        drawItem(item);
      } else earlyDelivered.set(e.id, e.ms ?? null);
      return;
    }
    case "progress":
      return progress(e);
    case "file": {
      offerGone(e.from, e.id);
      const c = conv(e.room ?? e.from);
      // The transfer's item (from its progress) becomes the file: by its id when the event
      // has one, else the unfinished transfer of that size. Never a finished item: a file sent
      // again under an id is a new item.
      const item = (e.id === undefined ? undefined : transfer(c, e.from, e.id)) ??
        [...c.items.values()].find((i) =>
          i.incoming && !i.done && i.from === e.from && i.progress?.total === e.bytes
        ) ??
        addItem(c, {
          id: e.id ?? `file-${Date.now()}-${Math.random()}`,
          from: e.from,
          kind: "file",
          at: new Date().toISOString(),
        });
      if (e.ref !== undefined) c.refs.set(e.ref, item);
      Object.assign(item, {
        done: true,
        ref: e.ref,
        file: { name: e.name, bytes: e.bytes, sha256: e.sha256, path: e.path },
        download: e.download,
        progress: { bytes: e.bytes, total: e.bytes },
      });
      drawItem(item);
      arrived(c);
      break;
    }
    case "file_offer":
      state.offers.set(`${e.from} ${e.id}`, e);
      drawOffers();
      notice(
        `${e.from} offers a file${e.room ? ` to ${e.room}` : ""}: ${shownName(e.name)} (${
          size(e.bytes)
        })`,
      );
      return;
    case "file_failed": {
      // An offer being answered: its reply says why, on its card (the refusal comes first).
      const offer = e.direction === "in" ? state.offers.get(`${e.peer} ${e.id}`) : undefined;
      if (offer?.answering) return;
      notice(e.message, "warning");
      offerGone(e.peer, e.id);
      return;
    }
    case "offer_answered":
      // Answered here (whose reply came first and took the card) or in another tab: it goes.
      offerGone(e.from, e.id);
      return;
    case "trusted":
      // Mark verified or Trust new key, here or in another tab.
      keyTrusted(e.peer, e.trust, e.keyChanges);
      return;
    case "key_changed": {
      // Seen on a connection, a mailbox item or a room's list: on the peer's conversation.
      const left = (state.keyChanges.get(e.peer) ?? [])
        .filter((k) => k.keyFingerprint !== e.keyFingerprint);
      setKeyChanges(e.peer, [...left, {
        keyFingerprint: e.keyFingerprint,
        at: new Date().toISOString(),
        via: e.via,
      }]);
      touch(conv(e.peer));
      break;
    }
    case "key_change_dismissed":
      // Dismissed here or in another tab: those of other keys stay.
      if (!setKeyChanges(e.peer, e.keyChanges)) return;
      break;
    case "log_alarm":
      logAlarm(e);
      break;
    case "warning": {
      // About our own certificate: apart, where what peers cause cannot push it out of view.
      if (e.about === "identity") {
        identityNotice(e.message);
        return;
      }
      notice(e.message, "warning");
      // On the conversation the core says it is about: a name quoted in the text may be anyone's
      // (a member's refused mailbox item "addressed to \"bob\"" is not about bob).
      const c = typeof e.peer === "string" ? state.convs.get(e.peer) : undefined;
      if (c) c.status = e.message;
      break;
    }
    case "error":
      notice(e.message, "error");
      return;
    case "ca_back":
      notice(e.message);
      return;
    case "room_invite":
      state.roomInvites.set(`${e.from} ${e.room}`, { room: e.room, from: e.from });
      drawInvitations();
      notice(`${e.from} invites you to ${e.room}`);
      return;
    case "room_invite_dropped":
      // Given up by the client to bound the invitations that wait: its card goes, in every tab.
      invitationGone(`${e.from} ${e.room}`);
      notice(`${e.from}'s invitation to ${e.room} is dropped: ${e.reason}`);
      return;
    case "room_declined":
      // Declined here (whose reply took the card) or in another tab: said once in each tab, in
      // the terminal's words (the server words it).
      invitationGone(`${e.from} ${e.room}`);
      notice(e.message);
      return;
    case "room_joined": {
      // Another room of a name we left (or one we were never in this run): a fresh conversation,
      // its history read again (the core's, of the room we are in now). Never the left room's
      // messages shown as said in this one.
      const had = state.convs.get(e.room);
      if (had && (!state.rooms.has(e.room) || (had.roomId && had.roomId !== e.roomId))) {
        freshConversation(had);
      }
      conv(e.room).roomId = e.roomId;
      state.rooms.add(e.room);
      // In a room of that name now: the client dropped every invitation to one.
      for (const [k, i] of state.roomInvites) if (i.room === e.room) invitationGone(k);
      const c = conv(e.room);
      c.status = `Members: ${e.members.join(", ")}`;
      touch(c);
      drawInvitations();
      if (!state.selected || state.selected === e.room) select(e.room);
      break;
    }
    case "room_message":
      received(conv(e.room), e);
      break;
    case "room_member": {
      const c = conv(e.room);
      if (e.name === state.me) {
        state.rooms.delete(e.room);
        c.status = e.change === "left" ? "You left this room" : "You were removed from this room";
      } else c.status = `${e.name} ${e.change}`;
      break;
    }
    case "room_gap":
      notice(`${e.room}: ${e.count} message(s) from ${e.from} could not be recovered`);
      return;
    default:
      return;
  }
  drawList();
  drawConversation();
}

function snapshot(s) {
  state.me = s.identity.name;
  state.history = s.history;
  $("me").textContent = s.identity.name;
  $("me-fingerprint").textContent = group(s.identity.fingerprint);
  $("me-valid").textContent = new Date(s.identity.notAfter).toLocaleString();
  $("me-ca").textContent = `${s.identity.caUrl} (${s.identity.caFingerprint.slice(0, 16)}…)`;
  state.peers = new Map(s.peers.map((p) => [p.name, p]));
  state.invitations = new Set(s.invitations);
  state.rooms = new Set((s.rooms ?? []).map((r) => r.room));
  state.roomInvites = new Map(
    (s.roomInvitations ?? []).map((i) => [`${i.from} ${i.room}`, { room: i.room, from: i.from }]),
  );
  for (const room of state.rooms) touch(conv(room));
  state.offers = new Map((s.offers ?? []).map((o) => [`${o.from} ${o.id}`, o]));
  state.keyChanges = new Map();
  for (const k of s.keyChanges ?? []) {
    state.keyChanges.set(k.peer, [...(state.keyChanges.get(k.peer) ?? []), k]);
  }
  for (const name of state.keyChanges.keys()) conv(name);
  for (const { name, last } of s.conversations) {
    const c = conv(name);
    if (last > c.last) c.last = last;
  }
  for (const p of s.peers) touch(conv(p.name));
  // A fresh list in the old one's place, as for the log: the kept warnings, which every
  // snapshot (every reconnection) brings again, are not read out again.
  const notices = $("notices").cloneNode(false);
  for (const n of s.notices) notice(n, "warning", notices);
  $("notices").replaceWith(notices);
  const identityNotices = $("identity-notices").cloneNode(false);
  for (const n of s.identityNotices ?? []) identityNotice(n, identityNotices);
  $("identity-notices").replaceWith(identityNotices);
  for (const a of s.alarms ?? []) logAlarm(a);
  setLink(true);
  drawInvitations();
  drawOffers();
  drawList();
  if (!state.selected) {
    const recent = [...state.convs.values()].sort((a, b) => b.last.localeCompare(a.last))[0];
    if (recent) select(recent.name);
  } else {
    conv(state.selected).loaded = false;
    select(state.selected);
  }
}

// Empties a conversation for another of its name: its items go, and its history is read again.
function freshConversation(c) {
  c.items.clear();
  c.latest.clear();
  c.refs.clear();
  c.unread = 0;
  c.loaded = false;
  if (state.selected === c.name) select(c.name, { fresh: true });
}

function touch(c, at = new Date().toISOString()) {
  if (at > c.last) c.last = at;
}

function arrived(c) {
  touch(c);
  if (c.name !== state.selected || document.hidden) c.unread++;
  // The log says what comes to the open conversation; for another, a screen reader hears
  // its count (the list's badge is not a live region).
  if (c.name !== state.selected) {
    $("announce").textContent = `New message ${
      isRoom(c.name) ? "in" : "from"
    } ${c.name}: ${c.unread} unread`;
  }
}

/**
 * Adds `item` to conversation `c` (drawn at the end when `show` and open) and returns it. One of
 * ours that is there already (the reply to our send after its `sent` event) is that item again,
 * and only its status can move on. A peer's item is always a new one: one under an id it used
 * before is kept beside the earlier one (marked `repeats`), never merged into it.
 */
function addItem(c, item, show = true) {
  const mine = item.from === state.me;
  if (mine && earlyDelivered.has(item.id)) {
    item.state = "delivered";
    item.ms = earlyDelivered.get(item.id) ?? undefined;
    earlyDelivered.delete(item.id);
  }
  const base = itemKey(item.from, item.id, item.kind);
  let key = base;
  if (mine) {
    const old = c.items.get(key);
    if (old) {
      // Its status only moves on (sent, then delivered), whichever news came first.
      if (!old.state || item.state === "delivered") {
        old.state = item.state;
        old.ms = item.ms ?? old.ms;
      }
      drawItem(old);
      return old;
    }
  } else {
    const latest = c.latest.get(base);
    const n = (latest?.n ?? 0) + 1;
    if (n > 1) {
      key = `${base} ${n}`;
      item.repeats = true;
    }
    // An entry of the history is older than what came live: the latest stays the live one.
    c.latest.set(base, { key: show || !latest ? key : latest.key, n });
    if (item.ref !== undefined) c.refs.set(item.ref, item);
  }
  item.conv = c.name;
  c.items.set(key, item);
  if (c.items.size > MAX_ITEMS + MAX_ITEMS / 10) forgetOldest(c);
  touch(c, item.at);
  if (show && c.name === state.selected) {
    $("timeline").append(drawItem(item));
    scrollDown();
  }
  return item;
}

// A message that arrived (from a peer, or in a room) joins its conversation.
function received(c, e) {
  addItem(c, {
    id: e.id,
    from: e.from,
    at: new Date().toISOString(),
    kind: "message",
    text: e.text,
    ref: e.ref,
    late: e.late === true,
  });
  arrived(c);
}

function progress(e) {
  const c = conv(e.room ?? e.peer);
  // A transfer of ours by its id; a peer's by its sender and id.
  let item = e.direction === "in"
    ? transfer(c, e.peer, e.id)
    : c.items.get(e.id) ?? [...c.items.values()].find((i) => i.transferId === e.id);
  if (!item && e.direction === "out") {
    // Our upload, now on its way to the peer: it takes the transfer's id.
    item = [...c.items.values()].find((i) => i.upload && i.uploaded && !i.transferId);
    if (item) item.transferId = e.id;
  }
  if (!item && e.direction === "in") {
    item = addItem(c, {
      id: e.id,
      from: e.peer,
      at: new Date().toISOString(),
      kind: "file",
      incoming: true,
      file: { name: "receiving a file…", bytes: e.total },
    });
  }
  if (!item) return;
  item.progress = { bytes: e.bytes, total: e.total };
  drawItem(item);
}

// ---------------------------------------------------------------------------
// What the user does

function select(name, { fresh = name !== state.selected } = {}) {
  // The errors of the last conversation's buttons are not this one's.
  if (name !== state.selected) {
    for (const id of ["verify", "trust", "file"]) {
      fieldError($(id), "");
    }
  }
  state.selected = name;
  const c = conv(name);
  c.unread = 0;
  const nodes = [...c.items.values()].sort((a, b) => a.at.localeCompare(b.at)).map(drawItem);
  const old = $("timeline");
  if (fresh) {
    // Another conversation (or its history): a fresh log takes the old one's place. Text
    // added to a live region is read out, so refilling the old one would read the whole
    // conversation again at every switch.
    const timeline = old.cloneNode(false);
    timeline.append(...nodes);
    const hadFocus = document.activeElement === old;
    old.replaceWith(timeline);
    if (hadFocus) timeline.focus();
  } else {
    // The same one drawn again (a reconnection): the log stays, and only what moved moves.
    nodes.forEach((node, i) => {
      if (old.children[i] !== node) old.insertBefore(node, old.children[i] ?? null);
    });
    for (const extra of [...old.children].slice(nodes.length)) extra.remove();
  }
  drawList();
  drawConversation();
  scrollDown();
  if (!c.loaded && linkUp) {
    c.loaded = true;
    operate("history", { name, limit: 50 }).then((r) => {
      let added = false;
      const legacy = new Map(); // an old line's made-up ref → how many such so far
      for (const entry of r?.entries ?? []) {
        if (entry.from === state.me) {
          // Ours: by its id, which we chose unique.
          if (c.items.has(itemKey(entry.from, entry.id, entry.kind))) continue;
        } else {
          // A peer's (whose ids may repeat): by the ref the core gave it, the same in the event
          // that showed it live. A line of an earlier version has none and never came live to
          // this page: its ref is made of what it says, its nth twin's the nth.
          let ref = entry.ref;
          if (typeof ref !== "string") {
            const what = `${entry.from} ${entry.kind} ${entry.id} ${entry.at}`;
            const n = (legacy.get(what) ?? 0) + 1;
            legacy.set(what, n);
            ref = `old ${what} ${n}`;
          }
          const live = c.refs.get(ref);
          if (live) {
            // The core's time, as the entries around it have, orders it among them.
            live.at = entry.at;
            continue;
          }
          entry.ref = ref;
        }
        // Drawn by select() below, with the rest: old messages are not news to announce.
        addItem(c, { ...entry, done: true, incoming: entry.from !== state.me }, false);
        added = true;
      }
      markRepeats(c);
      if (state.selected === name) select(name, { fresh: added });
    }, () => c.loaded = false);
  }
  if (!isRoom(name) && (state.peers.has(name) || !c.safety)) fetchSafety(name);
}

/**
 * Forgets the oldest items (by time) of a conversation past MAX_ITEMS, from the log too; the
 * history file keeps them.
 */
function forgetOldest(c) {
  const old = [...c.items.entries()].sort(([, a], [, b]) => a.at.localeCompare(b.at))
    .slice(0, c.items.size - MAX_ITEMS);
  for (const [key, item] of old) {
    c.items.delete(key);
    if (item.ref !== undefined) c.refs.delete(item.ref);
    item.node?.remove();
  }
  // A peer's id none of the kept items has: its count goes too.
  const kept = new Set([...c.items.values()].map((i) => itemKey(i.from, i.id, i.kind)));
  for (const base of c.latest.keys()) if (!kept.has(base)) c.latest.delete(base);
}

/**
 * Marks each of a peer's items that has an earlier one under its id and kind (by time: an entry
 * of the history may join after a later item that came live).
 */
function markRepeats(c) {
  const seen = new Set();
  const peers = [...c.items.values()].filter((i) => i.from !== state.me);
  for (const item of peers.sort((a, b) => a.at.localeCompare(b.at))) {
    const base = itemKey(item.from, item.id, item.kind);
    item.repeats = seen.has(base);
    seen.add(base);
  }
}

function fetchSafety(name) {
  operate("safety", { name }).then((r) => {
    conv(name).safety = r.number;
    drawConversation();
  }, () => {});
}

$("start").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = $("chat-with");
  const name = input.value.trim();
  if (!name) return;
  fieldError(input, "");
  if (isRoom(name)) {
    // A room: join it when invited, else create it.
    const action = [...state.roomInvites.values()].some((i) => i.room === name) ? "join" : "create";
    operate("room", { action, room: name }).then(() => {
      input.value = "";
      // Opened, as a chat started here is (its room_joined opens it only when none is open).
      select(name);
    }, (e) => fieldError(input, errorText(e)));
    return;
  }
  const c = conv(name);
  c.status = `Inviting ${name}…`;
  select(name);
  operate("invite", { name }).then(() => {
    input.value = "";
  }, (e) => {
    c.status = errorText(e);
    fieldError(input, errorText(e));
    drawConversation();
  });
});

$("compose").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const box = $("message");
  const text = box.value;
  const name = state.selected;
  if (!text.trim() || !name) return;
  fieldError(box, "");
  // In a room: /invite NAME, /remove NAME, /members, /leave.
  const command = isRoom(name)
    ? /^\/(invite|remove|members|leave)(?: ([a-z0-9][a-z0-9_-]*))?$/
      .exec(text.trim())
    : null;
  if (command) {
    operate("room", { action: command[1], room: name, name: command[2] }).then((r) => {
      box.value = "";
      if (command[1] === "members") {
        conv(name).status = `Members (list version ${r.version}, hash ${r.hash.slice(0, 16)}…): ${
          r.members.map((m) => `${m.name} ${m.keyFingerprint.slice(0, 8)}`).join(", ")
        }`;
        drawConversation();
      } else if (command[1] === "invite") notice(`Invited ${command[2]} to ${name}`);
    }, (e) => fieldError(box, errorText(e)));
    return;
  }
  operate("send", { name, text }).then((r) => {
    box.value = "";
    addItem(conv(name), {
      id: r.id,
      from: state.me,
      to: name,
      at: new Date().toISOString(),
      kind: "message",
      text,
      state: "sent",
    });
    drawList();
  }, (e) => fieldError(box, errorText(e)));
});

/**
 * Shows (or, with "", clears) the error of a failed action beside its control: the control is
 * described by it (aria-describedby in the page names its role=alert element, which is always
 * there, so the text is read out once) and a field is marked invalid.
 */
function fieldError(field, text) {
  const el = alertOf(field);
  if (el.textContent !== text) el.textContent = text;
  if (field.tagName === "BUTTON") return;
  if (text) field.setAttribute("aria-invalid", "true");
  else field.removeAttribute("aria-invalid");
}

// The role=alert element among those that describe a control.
function alertOf(control) {
  return (control.getAttribute("aria-describedby") ?? "").split(/\s+/).map((id) => $(id))
    .find((el) => el?.getAttribute("role") === "alert");
}

/**
 * The error of a card's button (an invitation's "Accept" or "Join", a file's "Accept file" or
 * "Decline file"): in the list's alert, which stays in the page (the cards are drawn again at
 * every change, and an alert drawn again is read again), and described by that button alone.
 * With "", cleared; it also goes with the card.
 */
function cardError(list, key, text) {
  if (text) state.cardErrors.set(list.id, { key, text });
  else state.cardErrors.delete(list.id);
  describeCardError(list);
}

// After a list of cards is drawn: its failed button, if still there, is described by the error.
function describeCardError(list) {
  const error = state.cardErrors.get(list.id);
  const el = $(`${list.id}-error`);
  const control = error &&
    [...list.querySelectorAll("button")].find((b) => b.dataset.key === error.key);
  if (!control) state.cardErrors.delete(list.id);
  else {
    const ids = (control.getAttribute("aria-describedby") ?? "").split(/\s+/);
    if (!ids.includes(el.id)) control.setAttribute("aria-describedby", [...ids, el.id].join(" "));
  }
  setText(el, control ? error.text : "");
}

for (const id of ["chat-with", "message"]) {
  $(id).addEventListener("input", () => fieldError($(id), ""));
}

$("message").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    $("compose").requestSubmit();
  }
});

$("file").addEventListener("change", () => {
  const input = $("file");
  fieldError(input, "");
  for (const file of input.files) upload(state.selected, file);
  input.value = "";
});

// Drag and drop anywhere on the conversation.
const main = $("conversation");
main.addEventListener("dragover", (ev) => {
  if (!canSend()) return;
  ev.preventDefault();
  $("drop").hidden = false;
});
main.addEventListener("dragleave", (ev) => {
  if (ev.target === main || ev.target === $("drop")) $("drop").hidden = true;
});
main.addEventListener("drop", (ev) => {
  ev.preventDefault();
  $("drop").hidden = true;
  if (!canSend()) return;
  for (const file of ev.dataTransfer?.files ?? []) upload(state.selected, file);
});

function upload(name, file) {
  if (!name) return;
  const c = conv(name);
  const id = `upload-${++uploads}`;
  addItem(c, {
    id,
    from: state.me,
    to: name,
    at: new Date().toISOString(),
    kind: "file",
    upload: true,
    file: { name: file.name, bytes: file.size },
    progress: { bytes: 0, total: file.size },
  });
  const item = c.items.get(id);
  const xhr = new XMLHttpRequest();
  const query = new URLSearchParams({ to: name, name: file.name });
  xhr.open("POST", `/upload?${query}`);
  xhr.setRequestHeader("x-e2e-chat-key", pageKey);
  xhr.upload.onprogress = (ev) => {
    // The first half of the bar is the upload to the client; the rest comes as `progress`.
    if (!item.transferId) {
      item.progress = { bytes: ev.loaded, total: ev.total || file.size, phase: "upload" };
      drawItem(item);
    }
  };
  xhr.upload.onload = () => item.uploaded = true;
  xhr.onload = () => {
    let body = {};
    try {
      body = JSON.parse(xhr.responseText);
    } catch { /* not JSON */ }
    if (xhr.status === 200) {
      item.progress = { bytes: file.size, total: file.size };
      item.state = earlyDelivered.has(body.id) ? "delivered" : "sent";
      item.done = true;
      c.items.delete(id);
      const existing = c.items.get(body.id);
      if (existing) {
        existing.node?.remove();
        if (existing.state === "delivered") {
          Object.assign(item, { state: "delivered", ms: existing.ms });
        }
      }
      item.id = body.id;
      c.items.set(body.id, item);
      earlyDelivered.delete(body.id);
    } else {
      item.failed = errorText(body);
      fieldError($("file"), `Cannot send ${file.name} to ${name}: ${errorText(body)}`);
    }
    drawItem(item);
  };
  xhr.onerror = () => {
    item.failed = "the upload failed";
    fieldError($("file"), `Cannot send ${file.name} to ${name}: the upload failed`);
    drawItem(item);
  };
  xhr.send(file);
}

// Both are about the safety number shown: the client refuses them when the key changed since (the
// page had not heard yet), and the number shown is then fetched again.
$("verify").addEventListener("click", () => {
  const name = state.selected;
  fieldError($("verify"), "");
  // Said by the status; the button goes, and drawConversation() moves focus on.
  operate("verify", { name, number: conv(name).safety }).then(
    () => keyTrusted(name, "verified"),
    (e) => {
      fieldError($("verify"), errorText(e));
      fetchSafety(name);
    },
  );
});

$("trust").addEventListener("click", () => {
  const name = state.selected;
  fieldError($("trust"), "");
  operate("trust", { name, number: conv(name).safety }).then((result) => {
    keyTrusted(name, "known", result?.keyChanges);
    if (state.selected === name) $("message").focus();
  }, (e) => {
    fieldError($("trust"), errorText(e));
    fetchSafety(name);
  });
});

// The user read the warning of a key change seen before: it goes, in every tab (the server says).
$("dismiss-key-change").addEventListener("click", () => {
  const name = state.selected;
  const shown = state.keyChanges.get(name)?.at(-1);
  if (!shown) return;
  // The change shown is named: one of another key seen meanwhile is not dismissed unseen.
  operate("dismissKeyChange", { name, keyFingerprint: shown.keyFingerprint }).then((result) => {
    if (!setKeyChanges(name, result?.keyChanges ?? [])) return;
    drawList();
    drawConversation();
  }, (e) => notice(errorText(e), "error"));
});

/** Sets the key changes of `name` still kept (the client's list); says whether that changed. */
function setKeyChanges(name, changes) {
  const before = JSON.stringify(state.keyChanges.get(name) ?? []);
  const now = Array.isArray(changes) ? changes : [];
  if (now.length) state.keyChanges.set(name, now);
  else state.keyChanges.delete(name);
  return JSON.stringify(now) !== before;
}

/**
 * A key marked verified or trusted (after a key change), in this tab or another (the server
 * tells every tab): the peer's state, its status and the buttons follow. A button that had focus
 * and goes hands it to the message box (drawConversation), never to another's action.
 */
function keyTrusted(name, trust, left) {
  const p = state.peers.get(name);
  const was = p?.trust;
  if (p) p.trust = trust;
  // The trusted key's change goes; another key's (an impostor's) stays.
  const wasChanged = trust === "known" && setKeyChanges(name, left ?? []);
  if (wasChanged) drawList();
  const c = conv(name);
  const status = trust === "verified"
    ? "Connected: safety number verified"
    : "Connected: new key trusted";
  // Once: the acting tab hears its reply, then the same news from the server.
  if (was === trust && c.status === status && !wasChanged) return;
  c.status = status;
  // What the buttons said of the key before (it had changed: trust it first) is past.
  if (name === state.selected) {
    fieldError($("verify"), "");
    fieldError($("trust"), "");
  }
  if (trust === "known") fetchSafety(name);
  drawConversation();
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && state.selected) {
    conv(state.selected).unread = 0;
    drawList();
  }
});

// ---------------------------------------------------------------------------
// Drawing

function canSend() {
  if (isRoom(state.selected)) return linkUp && state.rooms.has(state.selected);
  const p = state.peers.get(state.selected);
  return linkUp && p && p.trust !== "changed";
}

function drawInvitations() {
  const restore = keepFocus($("invitations"), $("invitations-title"));
  drawInvitationCards();
  describeCardError($("invitations"));
  restore();
  $("invitations-box").hidden = state.invitations.size === 0 && state.roomInvites.size === 0;
}

function drawInvitationCards() {
  const list = $("invitations");
  list.replaceChildren(...[...state.invitations].map((name) => {
    const li = document.createElement("li");
    const who = document.createElement("span");
    who.id = `invitation-${name}`;
    who.textContent = `${name} wants to chat`;
    const accept = document.createElement("button");
    accept.type = "button";
    accept.textContent = "Accept";
    // The name stays "Accept"; a screen reader also hears whose invitation it is.
    accept.setAttribute("aria-describedby", who.id);
    accept.dataset.key = `invite ${name}`;
    accept.addEventListener("click", () => {
      // aria-disabled, not disabled: a disabled button would drop the keyboard's focus.
      if (accept.getAttribute("aria-disabled") === "true") return;
      accept.setAttribute("aria-disabled", "true");
      cardError(list, "", "");
      const c = conv(name);
      c.status = `Connecting to ${name}…`;
      select(name);
      operate("accept", { name }).then(() => {
        state.invitations.delete(name);
        drawInvitations();
        $("message").focus();
      }, (e) => {
        accept.removeAttribute("aria-disabled");
        c.status = errorText(e);
        cardError(
          list,
          accept.dataset.key,
          `Cannot accept the invitation of ${name}: ${errorText(e)}`,
        );
        drawConversation();
      });
    });
    li.append(who, " ", accept);
    return li;
  }));
  for (const [key, invite] of state.roomInvites) {
    const { room, from } = invite;
    const li = document.createElement("li");
    const what = document.createElement("span");
    // "#" is in no user name: one id per creator and room.
    what.id = `room-invitation-${from}${room}`;
    what.textContent = `${from} invites you to ${room}`;
    // Named "Join" and "Decline"; a screen reader also hears whose invitation, to which room.
    const button = (label, action, done) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = label;
      b.setAttribute("aria-describedby", what.id);
      b.dataset.key = `${action} ${key}`;
      // While answered, and once gone (the answer failed): inert, so focus stays where it was.
      if (invite.answering || invite.gone) b.setAttribute("aria-disabled", "true");
      b.addEventListener("click", () => {
        if (b.getAttribute("aria-disabled") === "true") return;
        invite.answering = true;
        for (const x of actions.querySelectorAll("button")) {
          x.setAttribute("aria-disabled", "true");
        }
        cardError(list, "", "");
        // The creator is named: with two invitations to rooms of that name, this card's is meant.
        operate("room", { action, room, name: from }).then((r) => {
          invite.answering = false;
          if (invite.gone) {
            state.roomInvites.delete(key);
            drawInvitations();
          }
          done(r);
        }, (e) => {
          // Gone meanwhile (declined in another tab, dropped): the card stays with the error
          // until dismissed. Else (its creator away) it can be answered again.
          invite.answering = false;
          drawInvitations();
          cardError(list, b.dataset.key, `Cannot ${action} ${room}: ${errorText(e)}`);
        });
      });
      return b;
    };
    const join = button("Join", "join", () => {
      select(room);
      focusAfter();
    });
    const decline = button("Decline", "decline", () => {
      // Said by the notice of its room_declined, which every tab gets.
      state.roomInvites.delete(key);
      drawInvitations();
    });
    const actions = document.createElement("div");
    actions.className = "actions";
    actions.append(join, " ", decline);
    if (invite.gone) {
      actions.append(
        " ",
        dismissButton(what.id, `dismiss ${key}`, () => {
          state.roomInvites.delete(key);
          drawInvitations();
        }),
      );
    }
    li.append(what, " ", actions);
    list.append(li);
  }
}

/**
 * The "Dismiss" of a card whose answer failed and that the client no longer holds: `drop` takes
 * the card away. Described by the card's text (`describedBy`, an id); `key` finds it again after
 * a redraw.
 */
function dismissButton(describedBy, key, drop) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = "Dismiss";
  b.setAttribute("aria-describedby", describedBy);
  b.dataset.key = key;
  b.addEventListener("click", drop);
  return b;
}

/**
 * An invitation the client no longer holds (declined or joined, here or in another tab; dropped):
 * its card goes, unless this tab's Join or Decline of it is on its way. That answer then fails,
 * and its card stays, inert, with the error beside the button pressed, until "Dismiss".
 */
function invitationGone(key) {
  const invite = state.roomInvites.get(key);
  if (!invite) return;
  if (invite.answering) invite.gone = true;
  if (invite.gone) return;
  state.roomInvites.delete(key);
  drawInvitations();
}

/**
 * An offer the client no longer holds (answered, here or in another tab; arrived; failed): its
 * card goes, unless this tab's own answer to it is on its way or failed. Its reply says why beside
 * its button, and the card stays, inert, until "Dismiss" (the loser of two tabs answering at once).
 */
function offerGone(from, id) {
  const offer = state.offers.get(`${from} ${id}`);
  if (!offer || offer.answering || offer.failed) return;
  state.offers.delete(`${from} ${id}`);
  drawOffers();
}

function drawList() {
  const list = $("conversations");
  const convs = [...state.convs.values()].sort((a, b) => b.last.localeCompare(a.last));
  const restore = keepFocus(list, $("conversations-title"));
  list.replaceChildren(...convs.map((c) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "conv";
    b.dataset.key = `conv ${c.name}`;
    if (c.name === state.selected) b.setAttribute("aria-current", "true");
    const name = document.createElement("span");
    name.className = "conv-name";
    name.textContent = c.name;
    const online = document.createElement("span");
    const on = isRoom(c.name) ? state.rooms.has(c.name) : state.peers.has(c.name);
    online.className = on ? "dot on" : "dot";
    online.textContent = isRoom(c.name) ? (on ? "room" : "room, left") : on ? "online" : "offline";
    b.append(name, " ", online);
    if (state.keyChanges.has(c.name)) {
      const k = document.createElement("span");
      k.className = "key-changed";
      k.textContent = "key changed";
      b.append(" ", k);
    }
    if (c.unread) {
      const badge = document.createElement("span");
      badge.className = "unread";
      badge.textContent = `${c.unread} unread`;
      b.append(" ", badge);
    }
    b.addEventListener("click", () => {
      select(c.name);
      // Where one writes; a disabled box cannot take focus, which then stays on this button.
      if (!$("message").disabled) $("message").focus();
    });
    li.append(b);
    return li;
  }));
  restore();
  $("no-conversations").hidden = convs.length > 0;
  drawTitle(convs);
}

// The tab's title: unread messages, the open conversation, and who we are.
function drawTitle(convs) {
  const unread = convs.reduce((n, c) => n + c.unread, 0);
  const title = `${unread ? `(${unread}) ` : ""}${state.selected ? `${state.selected} — ` : ""}${
    state.me || "e2e-chat"
  } — e2e-chat`;
  if (document.title !== title) document.title = title;
}

/**
 * Call before a list is redrawn, and what it returns after, so the keyboard's focus is not
 * lost: a control inside it that had focus gets it back in its new drawing (by its data-key).
 * When it is gone (an answered card, one answered in another tab), focus goes to the
 * list's heading while the list has controls left, else to the message box or "Chat with" —
 * never to the control now in its place, which may act for someone else (another sender's
 * "Accept", pressed by the next Enter).
 */
function keepFocus(list, heading) {
  const had = document.activeElement;
  if (!had || !list.contains(had)) return () => {};
  const controls = () => [...list.querySelectorAll("button, a, input")];
  return () => {
    if (list.contains(document.activeElement)) return;
    const now = controls();
    const same = now.find((el) => had.dataset.key && el.dataset.key === had.dataset.key);
    if (same) same.focus();
    else if (now.length && !list.closest("[hidden]")) heading.focus();
    else focusAfter();
  };
}

// Focus when what had it went away: where one writes, else where one starts a chat.
function focusAfter() {
  const box = $("message");
  if (!box.disabled) box.focus();
  else $("chat-with").focus();
}

function drawConversation() {
  const had = document.activeElement;
  const name = state.selected;
  const c = name ? conv(name) : undefined;
  const p = state.peers.get(name);
  setText($("peer"), name || "No conversation open");
  setText(
    $("peer-state"),
    !name
      ? ""
      : isRoom(name)
      ? (state.rooms.has(name) ? "room" : "room, left")
      : p
      ? (p.trust === "verified" ? "online, verified" : "online")
      : "offline",
  );
  // Set only when it changes: the status and the warning are live regions, read at each change.
  setText($("peer-status"), c?.status ?? "");
  const changed = p?.trust === "changed";
  // A key change seen before (its connection gone, or the pinned key back): said until the user
  // trusts a new key or dismisses it.
  const past = !changed && !!name && state.keyChanges.has(name);
  $("key-change").hidden = !changed && !past;
  $("key-change-now").hidden = !changed;
  $("key-change-past").hidden = !past;
  $("trust").hidden = !changed;
  $("dismiss-key-change").hidden = !past;
  setText($("key-change-name"), name);
  setText($("key-change-past-name"), name);
  const via = past ? state.keyChanges.get(name).at(-1).via : "";
  setText(
    $("key-change-via"),
    via === "mailbox" ? "a mailbox item" : via === "room" ? "a room's member list" : "a connection",
  );
  setText(
    $("key-change-at"),
    past ? new Date(state.keyChanges.get(name).at(-1).at).toLocaleString() : "",
  );
  $("safety").hidden = !c?.safety;
  setText($("safety-number"), c?.safety ?? "");
  setText($("safety-name"), name);
  const verified = p?.trust === "verified";
  $("verified").hidden = !verified;
  // Shown once there is a safety number to compare: the button names the one it was about.
  $("verify").hidden = verified || changed || !p || !c?.safety;
  const can = canSend();
  const box = $("message");
  box.disabled = !can;
  $("send").disabled = !can;
  const files = can;
  $("file").disabled = !files;
  $("file-label").classList.toggle("disabled", !files);
  drawSkip(box);
  // A control that had focus and is now disabled or hidden (the peer left, "Mark verified"
  // done) would drop it to the page: it goes to the message box, else to the messages.
  if (had && $("conversation").contains(had) && (had.disabled || had.closest("[hidden]"))) {
    (box.disabled ? $("timeline") : box).focus();
  }
}

// The skip link leads where one writes, or, while the box is disabled (and cannot take focus),
// to the messages; its name says which.
function drawSkip(box) {
  const skip = $("skip");
  const href = box.disabled ? "#timeline" : "#message";
  if (skip.getAttribute("href") !== href) skip.setAttribute("href", href);
  setText(skip, box.disabled ? "Skip to the messages" : "Skip to the message box");
}

$("skip").addEventListener("click", (ev) => {
  // Focus, without the fragment in the address (the page key came in one).
  ev.preventDefault();
  $($("skip").getAttribute("href").slice(1)).focus();
});

function setText(el, text) {
  if (el.textContent !== text) el.textContent = text;
}

/**
 * Makes `old` look like `fresh`, touching only what differs: the timeline is a live region,
 * and a node put back in it is read out again (a whole message at each tick of a file's bar).
 */
function morph(old, fresh) {
  for (const { name } of [...old.attributes]) {
    if (!fresh.hasAttribute(name)) old.removeAttribute(name);
  }
  for (const { name, value } of fresh.attributes) {
    if (old.getAttribute(name) !== value) old.setAttribute(name, value);
  }
  const was = [...old.childNodes];
  const now = [...fresh.childNodes];
  now.forEach((node, i) => {
    const x = was[i];
    if (!x) old.append(node);
    else if (x.nodeName !== node.nodeName) x.replaceWith(node);
    else if (node.nodeType === Node.TEXT_NODE) {
      if (x.data !== node.data) x.data = node.data;
    } else morph(x, node);
  });
  for (const x of was.slice(now.length)) x.remove();
}

function drawItem(item) {
  const li = document.createElement("li");
  // An article of the log (role=log on the <ol>): a listitem would need a list around it.
  li.setAttribute("role", "article");
  const mine = item.from === state.me;
  li.className = `item ${mine ? "mine" : "theirs"}`;
  li.dataset.id = item.id;
  const meta = document.createElement("div");
  meta.className = "meta";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = mine ? "you" : item.from;
  const time = document.createElement("time");
  time.dateTime = item.at;
  time.textContent = new Date(item.at).toLocaleTimeString([], {
    hour: "2-digit",
    minute: "2-digit",
  });
  meta.append(who, " ", time);
  if (mine && item.state) {
    const st = document.createElement("span");
    st.className = `state ${item.state}`;
    st.textContent = item.state === "delivered" ? "✓ delivered" : "sent";
    // As text, not a title: a title shows on hover only, to no keyboard or screen reader.
    if (typeof item.ms === "number") st.append(`, round trip ${item.ms.toFixed(1)} ms`);
    meta.append(" ", st);
  }
  if (item.late) {
    // Its author's later messages were shown before it (a member withheld it).
    const l = document.createElement("span");
    l.className = "late";
    l.textContent = "(late)";
    meta.append(" ", l);
  }
  if (item.repeats) {
    // Shown beside the earlier one, as the terminal and the history have both.
    const r = document.createElement("span");
    r.className = "repeats";
    r.textContent = `same id as an earlier ${item.kind} from ${item.from}`;
    meta.append(" ", r);
  }
  const parts = [meta];
  if (item.kind === "message") {
    const p = document.createElement("p");
    p.className = "text";
    p.textContent = item.text ?? "";
    parts.push(p);
  } else {
    const f = document.createElement("p");
    f.className = "file";
    const fname = document.createElement("span");
    fname.className = "file-name";
    const shown = shownName(item.file?.name ?? "file");
    fname.textContent = shown;
    f.append("File: ", fname);
    if (item.file?.bytes !== undefined) f.append(` (${size(item.file.bytes)})`);
    if (item.download && item.done) {
      const a = document.createElement("a");
      a.href = item.download;
      a.download = shown;
      a.textContent = "Download";
      a.setAttribute("aria-label", `Download ${shown}`);
      a.addEventListener("click", (ev) => {
        ev.preventDefault();
        download(item.download, a.download);
      });
      f.append(" ", a);
    }
    if (item.file?.sha256) {
      const h = document.createElement("span");
      h.className = "muted fp";
      h.textContent = ` SHA-256 ${item.file.sha256.slice(0, 16)}…`;
      f.append(h);
    }
    parts.push(f);
    if (item.progress) {
      const { bytes, total, phase } = item.progress;
      let pct = total ? Math.floor((bytes / total) * 100) : 100;
      if (phase === "upload") pct = Math.min(pct, 99);
      const bar = document.createElement("progress");
      bar.max = 100;
      bar.value = pct;
      bar.setAttribute("role", "progressbar");
      bar.setAttribute("aria-valuemin", "0");
      bar.setAttribute("aria-valuemax", "100");
      bar.setAttribute("aria-valuenow", String(pct));
      bar.setAttribute(
        "aria-label",
        `${mine ? "Sending" : "Receiving"} ${item.file?.name === undefined ? "a file" : shown}`,
      );
      const label = document.createElement("span");
      label.className = "pct";
      // The bar says it to assistive technology; this is for the eye (and is not read at each tick).
      label.setAttribute("aria-hidden", "true");
      label.textContent = `${pct} %`;
      parts.push(bar, label);
    }
    if (item.failed) {
      const err = document.createElement("p");
      err.className = "error";
      err.textContent = `Not sent: ${item.failed}`;
      parts.push(err);
    }
  }
  li.replaceChildren(...parts);
  if (!item.node) item.node = li;
  else morph(item.node, li);
  return item.node;
}

// Files offered to us wait here for an answer: nothing is written before "Accept file".
function drawOffers() {
  const list = $("offers");
  let n = 0;
  $("offers-box").hidden = state.offers.size === 0;
  const restore = keepFocus(list, $("offers-title"));
  list.replaceChildren(...[...state.offers.values()].map((o) => {
    const li = document.createElement("li");
    const what = document.createElement("p");
    what.id = `offer-${n++}`;
    // From a peer: shown as text only.
    // The SHA-256 only when the offer carried it (from an older peer, or the mailbox).
    what.textContent = `${o.from} offers ${shownName(o.name)} (${size(o.bytes)}${
      o.sha256 ? `, SHA-256 ${o.sha256.slice(0, 16)}…` : ""
    })`;
    const actions = document.createElement("div");
    actions.className = "actions";
    const answer = (label, op, kind) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = label;
      if (kind) b.className = kind;
      b.setAttribute("aria-describedby", what.id);
      b.dataset.key = `${label} ${o.from} ${o.id}`;
      // Answered (or failed): the buttons stay, inert, so focus stays where it was.
      if (o.answering || o.failed) b.setAttribute("aria-disabled", "true");
      b.addEventListener("click", () => {
        if (b.getAttribute("aria-disabled") === "true") return;
        for (const x of actions.querySelectorAll("button")) {
          x.setAttribute("aria-disabled", "true");
        }
        o.answering = true;
        cardError(list, "", "");
        operate(op, { name: o.from, file: o.id }).then(() => {
          state.offers.delete(`${o.from} ${o.id}`);
          drawOffers();
        }, (e) => {
          // The client no longer holds the offer: the card stays with the error until dismissed.
          o.answering = false;
          o.failed = true;
          drawOffers();
          cardError(
            list,
            b.dataset.key,
            `Cannot ${label.toLowerCase()} ${shownName(o.name)}: ${errorText(e)}`,
          );
        });
      });
      return b;
    };
    actions.append(answer("Accept file", "acceptFile"), answer("Decline file", "declineFile"));
    if (o.failed) {
      actions.append(dismissButton(what.id, `Dismiss ${o.from} ${o.id}`, () => {
        state.offers.delete(`${o.from} ${o.id}`);
        drawOffers();
      }));
    }
    li.append(what, actions);
    return li;
  }));
  describeCardError(list);
  restore();
}

// Evidence that the CA misbehaved: a banner that stays, at the top, not a passing notice.
function logAlarm(alarm) {
  const banner = $("log-alarm");
  const line = document.createElement("p");
  line.textContent = `Log alarm: ${alarm.message}. No new connections until this is resolved; ` +
    "tell your admin.";
  if ([...banner.children].some((p) => p.textContent === line.textContent)) return;
  banner.append(line);
  banner.hidden = false;
}

// A warning about our own certificate: the last few stay in view, whatever peers cause.
function identityNotice(message, list = $("identity-notices")) {
  const li = document.createElement("li");
  li.setAttribute("role", "none"); // a line of a status region, as a notice is
  li.textContent = message;
  list.append(li);
  while (list.children.length > 3) list.firstElementChild.remove();
}

function notice(message, kind = "info", list = $("notices")) {
  const li = document.createElement("li");
  // A line of a status region (role=status on the <ul>), not an item of a list it is not in.
  li.setAttribute("role", "none");
  li.className = kind;
  li.textContent = message;
  list.append(li);
  while (list.children.length > 5) list.firstElementChild.remove();
}

// A download needs a one-time ticket, asked for over the WebSocket (a link cannot carry the key).
function download(href, name) {
  const file = decodeURIComponent(href.slice("/download/".length));
  operate("download", { file }).then(({ href: ticketed }) => {
    const a = document.createElement("a");
    a.href = ticketed;
    a.download = name;
    a.hidden = true;
    document.body.append(a);
    a.click();
    a.remove();
  }, (e) => notice(`Cannot download ${name}: ${errorText(e)}`));
}

function scrollDown() {
  const t = $("timeline");
  t.scrollTop = t.scrollHeight;
}

function group(hex) {
  return hex.match(/.{1,4}/g).join(" ");
}

function size(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

setLink(false, "Connecting to the chat client…");
connect();
