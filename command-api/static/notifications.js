// Keel's notification page: opens /ws/notifications with the token as a subprotocol
// (browsers cannot set headers on a WebSocket; a token in the URL would be logged), lists
// what arrives, and on a drop reconnects with the last offset so nothing is missed.
'use strict';

const form = document.getElementById('connect');
const tokenInput = document.getElementById('token');
const statusLine = document.getElementById('status');
const list = document.getElementById('notifications');

let socket = null;
let lastOffset = null;
let retries = 0;

function setStatus(text) {
  statusLine.textContent = text;
}

function who(by) {
  return by && by.name ? by.name : 'Someone';
}

function describe(n) {
  switch (n.type) {
    case 'comment.added':
      return `${who(n.data.by)} commented on your post: “${n.data.excerpt}”`;
    case 'post.liked':
      return `${who(n.data.by)} liked your post`;
    case 'user.role_changed':
      return `Your roles are now: ${n.data.roles.join(', ')}`;
    default:
      return n.type;
  }
}

function show(text, type) {
  const item = document.createElement('li');
  item.dataset.type = type;
  item.textContent = text; // never innerHTML: notifications quote what users wrote
  if (type === 'recovery.incomplete') item.className = 'note';
  list.prepend(item);
}

function connect() {
  const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
  const protocols = ['keel.v1', 'bearer.' + tokenInput.value.trim()];
  if (lastOffset) protocols.push('last-event-id.' + lastOffset);
  const current = new WebSocket(scheme + location.host + '/ws/notifications', protocols);
  socket = current;
  setStatus('connecting');
  current.onopen = () => {
    retries = 0;
    setStatus('connected');
  };
  current.onmessage = (event) => {
    const n = JSON.parse(event.data);
    if (n.type === 'recovery.incomplete') {
      show('Some older notifications could not be recovered.', n.type);
      return;
    }
    lastOffset = n.offset;
    show(describe(n), n.type);
  };
  current.onclose = (event) => {
    if (socket !== current) return;
    if (event.code === 4001) {
      setStatus('token expired: paste a new one and connect');
      return;
    }
    const delay = Math.min(30000, 500 * 2 ** retries++);
    setStatus(`disconnected (${event.code}); reconnecting in ${delay / 1000} s`);
    setTimeout(() => { if (socket === current) connect(); }, delay);
  };
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  if (socket) {
    const old = socket;
    socket = null;
    old.close(1000);
  }
  lastOffset = null;
  list.replaceChildren();
  connect();
});

// A token in the fragment (which browsers never send to the server) connects at once:
// http://127.0.0.1:8080/#token=<jwt>. It is removed from the address bar right away.
const fromFragment = new URLSearchParams(location.hash.slice(1)).get('token');
if (fromFragment) {
  tokenInput.value = fromFragment;
  history.replaceState(null, '', location.pathname);
  connect();
}
