// Keel's notification page. It takes an access token (pasted, or from the URL fragment)
// and keeps it in the page: before each (re)connect it mints a single-use ticket with it
// (POST /api/ws-tickets, token in the Authorization header) and opens /ws/notifications
// offering the subprotocols keel.v1 and ticket.<ticket>, so no JWT travels in the
// WebSocket handshake (browsers cannot set headers on a WebSocket, and a token in the URL
// would be logged). It lists what arrives and, after a drop, reconnects with a fresh
// ticket and the last offset (last-event-id.<offset>) so nothing is missed. A refused
// token (401/403 on the ticket), close code 4001 (token expired) and 4003 (access
// revoked) end it until a new token is submitted.
'use strict';

const form = document.getElementById('connect');
const tokenInput = document.getElementById('token');
const statusLine = document.getElementById('status');
const list = document.getElementById('notifications');

let socket = null;
let session = 0; // bumped by each connect and each new token: older callbacks see a stale one
let timer = null;
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

// A single-use ticket for the socket: {ticket} on 201, else {status, detail} (the
// problem document's detail, when there is one).
async function mintTicket(token) {
  const response = await fetch('/api/ws-tickets', {
    method: 'POST',
    headers: { authorization: 'Bearer ' + token },
    cache: 'no-store',
    credentials: 'omit',
  });
  if (response.status === 201) {
    const body = await response.json();
    return { ticket: body.ticket };
  }
  let detail = null;
  try {
    detail = (await response.json()).detail || null;
  } catch (_) {
    // not a problem document
  }
  return { status: response.status, detail };
}

function retryLater(current, why) {
  const delay = Math.min(30000, 500 * 2 ** retries++);
  setStatus(`${why}; reconnecting in ${delay / 1000} s`);
  timer = setTimeout(() => {
    timer = null;
    if (session === current) connect();
  }, delay);
}

async function connect() {
  const current = ++session;
  setStatus('connecting');
  let minted;
  try {
    minted = await mintTicket(tokenInput.value.trim());
  } catch (_) {
    if (session === current) retryLater(current, 'cannot reach the server');
    return;
  }
  if (session !== current) return;
  if (!minted.ticket) {
    if (minted.status === 401 || minted.status === 403) {
      // Retrying cannot help: the token (or its user) is refused until a new one is given.
      setStatus(minted.detail || (minted.status === 401 ? 'token refused' : 'not allowed'));
      return;
    }
    retryLater(current, `no ticket (${minted.status})`);
    return;
  }
  const scheme = location.protocol === 'https:' ? 'wss://' : 'ws://';
  const protocols = ['keel.v1', 'ticket.' + minted.ticket];
  if (lastOffset) protocols.push('last-event-id.' + lastOffset);
  const opened = new WebSocket(scheme + location.host + '/ws/notifications', protocols);
  socket = opened;
  opened.onopen = () => {
    if (session !== current) return;
    retries = 0;
    setStatus('connected');
  };
  opened.onmessage = (event) => {
    if (session !== current) return;
    const n = JSON.parse(event.data);
    if (n.type === 'recovery.incomplete') {
      show('Some older notifications could not be recovered.', n.type);
      return;
    }
    lastOffset = n.offset;
    show(describe(n), n.type);
  };
  opened.onclose = (event) => {
    if (session !== current) return;
    socket = null;
    if (event.code === 4001) {
      setStatus('token expired: paste a new one and connect');
      return;
    }
    if (event.code === 4003) {
      setStatus('access revoked');
      return;
    }
    // The ticket is spent: the next attempt mints a new one.
    retryLater(current, `disconnected (${event.code})`);
  };
}

// Abandons the current socket, pending reconnect and ticket request.
function stop() {
  session++;
  if (timer) {
    clearTimeout(timer);
    timer = null;
  }
  if (socket) {
    const old = socket;
    socket = null;
    old.close(1000);
  }
}

form.addEventListener('submit', (event) => {
  event.preventDefault();
  stop();
  lastOffset = null;
  retries = 0;
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
