// A local Wechaty gateway for alarm-bot's end-to-end tests and benchmark.
//
// A wechaty-puppet-service gRPC server (plaintext, 127.0.0.1 only) in front of
// wechaty-puppet-mock, with a fixed world: the bot account, three people and
// four rooms. A small HTTP control endpoint, also on 127.0.0.1, lets a test make
// anyone say anything anywhere, invite the bot into a room and read what
// happened. Every event is printed as one JSON object per line on stdout; the
// first line is "listening", with both addresses.
//
// Environment:
//   GW_PORT                       gRPC port (required: the bot must know it)
//   WECHATY_PUPPET_SERVICE_TOKEN  the token clients must present (required)
//   GW_CONTROL_PORT               HTTP control port (default 0: any free port)
//
// Control endpoint (JSON in, JSON out):
//   POST /say     {from, room | to, text, mention: [ids], wait_ms}
//                 `from` says `text` in `room` (topic or id) or directly to
//                 `to`; with wait_ms, answers once the bot has replied in that
//                 conversation (reply: {...} or null when it did not in time)
//   POST /invite  {room, by}      `by` invites the bot into `room`
//   GET  /events?since=SEQ        events after SEQ
//   GET  /state                   {subscribed, logged_in}
//   POST /shutdown                stop and exit 0
import http from 'node:http'

import { PuppetMock, mock } from 'wechaty-puppet-mock'
import { PuppetServer } from 'wechaty-puppet-service'

const HOST = '127.0.0.1'
const GRPC_PORT = Number(process.env.GW_PORT)
const TOKEN = process.env.WECHATY_PUPPET_SERVICE_TOKEN
const CONTROL_PORT = Number(process.env.GW_CONTROL_PORT || 0)
if (!GRPC_PORT || !TOKEN) {
  console.error('gateway: GW_PORT and WECHATY_PUPPET_SERVICE_TOKEN are required')
  process.exit(64)
}

// ---- event log -------------------------------------------------------------
const T0 = process.hrtime.bigint()
const nowMs = () => Number(process.hrtime.bigint() - T0) / 1e6
const events = []
const waiters = new Set()
let seq = 0

function record (event, fields = {}) {
  const entry = { seq: ++seq, t_ms: Math.round(nowMs() * 1000) / 1000, event, ...fields }
  events.push(entry)
  process.stdout.write(JSON.stringify(entry) + '\n')
  for (const waiter of waiters) waiter(entry)
  return entry
}

// ---- the fixed world -------------------------------------------------------
const mocker = new mock.Mocker()
const puppet = new PuppetMock({ mocker })

const people = {
  'bot-self': mocker.createContact({ id: 'bot-self', name: 'AlarmBot' }),
  alice: mocker.createContact({ id: 'alice', name: 'Alice' }),
  bob: mocker.createContact({ id: 'bob', name: 'Bob' }),
  carol: mocker.createContact({ id: 'carol', name: 'Carol' }),
}
const self = people['bot-self']

function makeRoom (id, topic, memberIds) {
  return mocker.createRoom({
    id, topic, memberIdList: memberIds, adminIdList: [], ownerId: memberIds.find(m => m !== self.id),
  })
}
const rooms = [
  makeRoom('alarm-room@chatroom', 'alarm-group', ['bot-self', 'alice', 'bob', 'carol']),
  makeRoom('random-room@chatroom', 'random-chat', ['bot-self', 'alice', 'bob']),
  // the bot is not in these two yet: they are for invitations
  makeRoom('oncall-room@chatroom', 'ops-oncall', ['alice', 'carol']),
  makeRoom('lunch-room@chatroom', 'lunch', ['bob', 'carol']),
]
const findRoom = key => rooms.find(r => r.id === key || r.payload.topic === key)

// Runs on every puppet start (a client connecting restarts the puppet): log the
// bot in and mark the puppet ready, which the server replays to each client.
mocker.use(function signIn (m) {
  if (!m.puppet.isLoggedIn) m.login(self)
  m.puppet.emit('ready', { data: 'ready' })
  return () => {}
})

// ---- what the bot sends ----------------------------------------------------
// Pending says, by conversation id, so the reply's round trip is measured here
// (from the mock posting the message to the bot's send reaching the gateway).
const pending = new Map()
const sendText = puppet.messageSendText.bind(puppet)
puppet.messageSendText = async (conversationId, text, mentionIdList) => {
  const asked = pending.get(conversationId)
  pending.delete(conversationId)
  record('bot_send_text', {
    conversation: conversationId,
    text,
    mentions: mentionIdList || [],
    reply_to: asked ? asked.seq : null,
    rtt_ms: asked ? Math.round((nowMs() - asked.at) * 1000) / 1000 : null,
  })
  // wechaty-puppet-mock drops the mention ids; the log above keeps them
  return sendText(conversationId, text)
}

// ---- invitations (wechaty-puppet-mock has none of its own) -----------------
const invitations = new Map()
puppet.roomInvitationRawPayload = async id => {
  const invitation = invitations.get(id)
  if (!invitation) throw new Error(`no invitation ${id}`)
  return invitation
}
puppet.roomInvitationAccept = async id => {
  const invitation = invitations.get(id)
  if (!invitation) throw new Error(`no invitation ${id}`)
  const room = findRoom(invitation.roomId)
  record('invitation_accepted', { invitation: id, room: room.id })
  if (!room.payload.memberIdList.includes(self.id)) {
    room.add(self).by(people[invitation.inviterId])
  }
}

// ---- the client's event stream -----------------------------------------------
// The puppet server adds a 'message' listener when a client opens its event
// stream and removes it when the stream ends; poll for that.
let subscribed = false
setInterval(() => {
  const now = puppet.isLoggedIn && puppet.listenerCount('message') > 0
  if (now !== subscribed) {
    subscribed = now
    record(now ? 'client_subscribed' : 'client_unsubscribed')
  }
}, 20).unref()

// ---- control endpoint --------------------------------------------------------
class BadRequest extends Error {}

function say ({ from, room, to, text, mention = [] }) {
  const talker = people[from]
  if (!talker || from === self.id) throw new BadRequest(`unknown speaker: ${from}`)
  if (typeof text !== 'string' || !text) throw new BadRequest('text is required')
  let conversation
  if (room !== undefined) {
    conversation = findRoom(room)
    if (!conversation) throw new BadRequest(`unknown room: ${room}`)
  } else {
    conversation = people[to]
    if (!conversation) throw new BadRequest(`unknown contact: ${to}`)
  }
  const mentions = mention.map(id => people[id]).filter(Boolean)
  // a direct message's reply comes back in the conversation with the speaker
  const replyIn = room !== undefined ? conversation.id : talker.id
  const entry = record('said', { from, conversation: conversation.id, text, mentions: mention })
  pending.set(replyIn, { seq: entry.seq, at: nowMs() })
  talker.say(text, mentions).to(conversation)
  return { entry, replyIn }
}

function waitForReply (conversation, afterSeq, waitMs) {
  const done = events.find(e => e.seq > afterSeq && e.event === 'bot_send_text' &&
    e.conversation === conversation)
  if (done || !waitMs) return Promise.resolve(done || null)
  return new Promise(resolve => {
    const waiter = entry => {
      if (entry.event === 'bot_send_text' && entry.conversation === conversation) {
        finish(entry)
      }
    }
    const timer = setTimeout(() => finish(null), waitMs)
    function finish (entry) {
      clearTimeout(timer)
      waiters.delete(waiter)
      resolve(entry)
    }
    waiters.add(waiter)
  })
}

function invite ({ room, by = 'alice' }) {
  const target = findRoom(room)
  const inviter = people[by]
  if (!target || !inviter) throw new BadRequest(`unknown room or inviter: ${room}, ${by}`)
  const id = `invitation-${seq + 1}`
  invitations.set(id, {
    id,
    roomId: target.id,
    inviterId: inviter.id,
    topic: target.payload.topic,
    avatar: '',
    invitation: '',
    memberCount: target.payload.memberIdList.length,
    memberIdList: [...target.payload.memberIdList],
    receiverId: self.id,
    timestamp: Date.now(),
  })
  record('invited', { invitation: id, room: target.id, by })
  puppet.emit('room-invite', { roomInvitationId: id })
  return { invitation: id }
}

async function readJson (request) {
  let body = ''
  for await (const chunk of request) body += chunk
  try {
    return body ? JSON.parse(body) : {}
  } catch {
    throw new BadRequest('body is not JSON')
  }
}

async function route (request, url) {
  const key = `${request.method} ${url.pathname}`
  if (key === 'POST /say') {
    const body = await readJson(request)
    const { entry, replyIn } = say(body)
    const reply = await waitForReply(replyIn, entry.seq, Number(body.wait_ms || 0))
    return { seq: entry.seq, conversation: replyIn, reply }
  }
  if (key === 'POST /invite') return invite(await readJson(request))
  if (key === 'GET /events') {
    const since = Number(url.searchParams.get('since') || 0)
    return { events: events.filter(e => e.seq > since) }
  }
  if (key === 'GET /state') return { subscribed, logged_in: puppet.isLoggedIn }
  if (key === 'POST /shutdown') {
    setImmediate(() => shutdown(0))
    return { stopping: true }
  }
  return null
}

const control = http.createServer((request, response) => {
  const url = new URL(request.url, `http://${HOST}`)
  route(request, url).then(
    result => reply(response, result === null ? 404 : 200, result ?? { error: 'not found' }),
    error => reply(response, error instanceof BadRequest ? 400 : 500, { error: String(error.message) }),
  )
})

function reply (response, status, body) {
  response.writeHead(status, { 'content-type': 'application/json' })
  response.end(JSON.stringify(body))
}

// ---- start and stop --------------------------------------------------------------
const server = new PuppetServer({
  endpoint: `${HOST}:${GRPC_PORT}`,
  puppet,
  token: TOKEN,
  tls: { disable: true },
})

let stopping = false
async function shutdown (code) {
  if (stopping) return
  stopping = true
  record('shutdown', { code })
  control.close()
  try { await server.stop() } catch { /* already down */ }
  try { await puppet.stop() } catch { /* already down */ }
  process.exit(code)
}
process.on('SIGTERM', () => shutdown(0))
process.on('SIGINT', () => shutdown(0))

await server.start()
await new Promise(resolve => control.listen(CONTROL_PORT, HOST, resolve))
record('listening', {
  grpc: `${HOST}:${GRPC_PORT}`,
  control: `http://${HOST}:${control.address().port}`,
  rooms: rooms.map(r => ({ id: r.id, topic: r.payload.topic })),
})
