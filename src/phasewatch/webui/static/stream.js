// The server's events (Server-Sent Events on /events), ONE stream per browser, shared by
// all its tabs: a browser allows six connections per host, and each open stream holds one
// (the server also caps streams per address). The tabs elect a leader with a Web Lock:
// the tab holding the lock opens the EventSource and passes every event to the others on
// a BroadcastChannel; when it closes, the lock goes to another tab, which opens the stream
// in turn. A browser without Web Locks or BroadcastChannel opens a stream per tab.
//
// Listeners get: "field" (a field ended done or failed: its image JSON), "specimen"
// ({id}: statistics changed), "open" (the stream (re)connected: reload what is shown,
// events may have been missed) and "live" (true/false: whether a stream is connected).

const CHANNEL = "phasewatch-events";
const LEADER_LOCK = "phasewatch-events-leader";
const RECONNECT_MS = 10000; // after the server refused or closed the stream for good
const EVENTS = ["field", "specimen"];

const listeners = new Map();
let live = false;
let leader = false;
let channel = null;

export function on(type, listener) {
  if (!listeners.has(type)) listeners.set(type, new Set());
  listeners.get(type).add(listener);
}

export const isLive = () => live;
export const isLeader = () => leader;

function dispatch(type, data) {
  for (const listener of listeners.get(type) || []) listener(data);
}

function setLive(value) {
  live = value;
  dispatch("live", value);
}

// What the leader hears, every tab hears: here, and through the channel.
function share(type, data) {
  dispatch(type, data);
  if (channel) channel.postMessage({ kind: "event", type, data });
}

function shareLive(value) {
  setLive(value);
  if (channel) channel.postMessage({ kind: "live", live: value });
}

function openSource() {
  const source = new EventSource("/events");
  source.addEventListener("open", () => {
    shareLive(true);
    share("open", null);
  });
  for (const type of EVENTS) source.addEventListener(type, (event) => share(type, JSON.parse(event.data)));
  source.addEventListener("error", () => {
    shareLive(false);
    if (source.readyState === EventSource.CLOSED) setTimeout(openSource, RECONNECT_MS);
  });
}

function follow(message) {
  if (message.kind === "event") dispatch(message.type, message.data);
  else if (message.kind === "live") setLive(message.live);
  else if (message.kind === "hello" && leader) channel.postMessage({ kind: "live", live });
}

export function start() {
  if (!("BroadcastChannel" in window) || !navigator.locks) {
    openSource();
    return;
  }
  channel = new BroadcastChannel(CHANNEL);
  channel.addEventListener("message", (event) => follow(event.data));
  channel.postMessage({ kind: "hello" }); // a new tab asks the leader whether the stream is up
  // The lock is held for the life of this page (the promise never settles); the browser
  // releases it when the tab closes or navigates away.
  navigator.locks.request(LEADER_LOCK, () => new Promise(() => {
    leader = true;
    openSource();
  }));
}
