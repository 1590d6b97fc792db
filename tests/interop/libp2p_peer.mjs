// A js-libp2p peer for loomdb's interop tests (tests/integration/test_js_interop.py).
//
//   node libp2p_peer.mjs MULTIADDR TOPIC [DEADLINE_SECONDS]
//
// (Node 20 and 21: `node --experimental-websocket …` for a WebSocket address; Node 22
// has the global WebSocket that @libp2p/websockets dials with.)
//
// MULTIADDR is a loomdb node's address, TCP (/ip4/H/tcp/P/p2p/ID) or WebSocket
// (/ip4/H/tcp/P/ws/p2p/ID); TOPIC a collection topic (loomdb.replication.topics).
// It dials the node (Noise, Yamux), subscribes to TOPIC with gossipsub and prints,
// one JSON object a line on stdout:
//   {"event":"connected", ...}            the connection: peer, address, encryption, muxer
//   {"event":"gossip", ...}               each message received on TOPIC, decoded as
//                                         loomdb.replication.message says, its entry checked
// and answers commands read from stdin, one a line:
//   sync SPACE COLLECTION|- [FRAME_LIMIT]  over /loomdb/sync/1.0.0: hello, a reconcile of
//                                         the set [SPACE, COLLECTION|null, null] from an
//                                         empty side (Negentropy v1, messages of at most
//                                         FRAME_LIMIT bytes, default 1,000,000), then get
//                                         of every id learnt; prints {"event":"sync", ...}
//   quit                                  prints {"event":"report", ...} (counts) and exits
// Entries are checked here with JS multiformats and @ipld/dag-cbor, not with loomdb's
// code: the CID (CIDv1, dag-cbor, sha2-256) recomputed from the bytes, and the bytes
// decoded and re-encoded as DAG-CBOR (equal only if they are canonical).
// Any failure prints {"event":"error","message":...} and exits 1; so does the deadline.
import "./with_resolvers.mjs"; // first: js-libp2p 3.x needs Promise.withResolvers

import { createHash } from "node:crypto";
import { createInterface } from "node:readline";
import { inflateSync } from "node:zlib";

import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import * as dagCbor from "@ipld/dag-cbor";
import { gossipsub } from "@libp2p/gossipsub";
import { identify } from "@libp2p/identify";
import { tcp } from "@libp2p/tcp";
import { byteStream } from "@libp2p/utils";
import { webSockets } from "@libp2p/websockets";
import { multiaddr } from "@multiformats/multiaddr";
import * as cborg from "cborg";
import { createLibp2p } from "libp2p";
import { CID } from "multiformats/cid";
import { sha256 } from "multiformats/hashes/sha2";

const SYNC_PROTOCOL = "/loomdb/sync/1.0.0";
const FRAME = 0;
const CLOSE = 1;
const MAX_FRAME = 8 * 1024 * 1024;
const CID_PREFIX = Uint8Array.from([0x01, 0x71, 0x12, 0x20]);
const NEGENTROPY_V1 = 0x61;
const MAX_ROUNDS = 1000;
const GET_BATCH = 1000;

const [addrText, topic, deadlineText] = process.argv.slice(2);
if (!addrText || !topic) {
  process.stderr.write("usage: node libp2p_peer.mjs MULTIADDR TOPIC [DEADLINE_SECONDS]\n");
  process.exit(2);
}

const print = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
// stdout into a pipe is written asynchronously: exit once what was printed is out
const exit = (code) => process.stdout.write("", () => process.exit(code));
const fail = (err) => {
  print({ event: "error", message: String(err?.stack ?? err) });
  exit(1);
};
setTimeout(() => fail(`deadline of ${deadlineText ?? 120} s passed`), 1000 * Number(deadlineText ?? 120)).unref();

const hex = (bytes) => Buffer.from(bytes).toString("hex");
const equal = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const concat = (...parts) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};

// --- entries, checked with multiformats and @ipld/dag-cbor ----------------------------

async function checkEntry(raw, expected) {
  const cid = CID.create(1, dagCbor.code, await sha256.digest(raw));
  const out = { cid: cid.toString(), cid_matches: expected ? equal(cid.bytes, expected) : null };
  try {
    const fields = dagCbor.decode(raw);
    out.canonical = equal(dagCbor.encode(fields), raw);
    out.space = fields.space;
    out.collection = fields.coll;
    out.document = fields.doc;
    out.kind = fields.kind;
    out.parents = (fields.par ?? []).map((p) => CID.asCID(p)?.toString() ?? null);
  } catch (err) {
    out.canonical = false;
    out.decode_error = String(err);
  }
  return out;
}

// --- gossip ---------------------------------------------------------------------------

const gossip = [];

async function onGossip(message) {
  const out = { event: "gossip", topic: message.topic, from: message.from?.toString() ?? null };
  try {
    const body = cborg.decode(message.data); // plain CBOR, no tags
    if (body.v === 2) {
      // A batch (entries stored together): {"v": 2, "b": [entry bytes, ...]}, 2 to 500.
      if (!Array.isArray(body.b) || body.b.length < 2 || !body.b.every((r) => r instanceof Uint8Array)) {
        throw new Error("a version-2 message holds a batch of entries' bytes");
      }
      for (const raw of body.b) {
        const one = { ...out, type: "entry", batch: body.b.length, size: raw.length };
        Object.assign(one, await checkEntry(raw, null));
        gossip.push(one);
        print(one);
      }
      return;
    }
    if (body.v !== 1) throw new Error(`message version ${body.v}`);
    if (body.e instanceof Uint8Array) {
      Object.assign(out, { type: "entry", size: body.e.length }, await checkEntry(body.e, null));
    } else if (Array.isArray(body.a) && body.a.length === 4) {
      const [cid, space, collection, document] = body.a;
      Object.assign(out, { type: "announcement", cid: CID.decode(cid).toString() });
      Object.assign(out, { space, collection, document });
    } else {
      throw new Error("neither an entry nor an announcement");
    }
  } catch (err) {
    Object.assign(out, { type: "malformed", error: String(err) });
  }
  gossip.push(out);
  print(out);
}

// --- /loomdb/sync/1.0.0 -----------------------------------------------------------------

// A message: kind (1 byte) | length (unsigned LEB128 varint) | payload.
function encodeMessage(kind, payload) {
  const len = [];
  let n = payload.length;
  do {
    len.push((n & 0x7f) | (n > 0x7f ? 0x80 : 0));
    n >>>= 7;
  } while (n);
  return concat(Uint8Array.from([kind, ...len]), payload);
}

class SyncClient {
  constructor(stream) {
    this.bytes = byteStream(stream, { maxBufferSize: MAX_FRAME + 16 });
    this.requests = 0;
  }

  async read(n) {
    return (await this.bytes.read({ bytes: n })).subarray();
  }

  async call(op, args = {}) {
    // A sync frame: flag byte (0: CBOR, 1: zlib of CBOR), then the CBOR body.
    const body = cborg.encode({ v: 1, op, a: args });
    await this.bytes.write(encodeMessage(FRAME, concat(Uint8Array.of(0), body)));
    this.requests += 1;
    const [kind] = await this.read(1);
    let length = 0;
    for (let shift = 0; ; shift += 7) {
      const [b] = await this.read(1);
      length += (b & 0x7f) * 2 ** shift;
      if (!(b & 0x80)) break;
      if (shift > 56) throw new Error("a length over 9 bytes");
    }
    if (length > MAX_FRAME) throw new Error(`a reply of ${length} bytes`);
    const payload = await this.read(length);
    if (kind === CLOSE) {
      const code = (payload[0] << 8) | payload[1];
      throw new Error(`the node closed the stream: ${code} ${Buffer.from(payload.subarray(2))}`);
    }
    if (kind !== FRAME) throw new Error(`unknown message kind ${kind}`);
    if (payload[0] > 1) throw new Error(`unknown frame flags ${payload[0]}`);
    const cbor =
      payload[0] === 1
        ? inflateSync(payload.subarray(1), { maxOutputLength: MAX_FRAME })
        : payload.subarray(1);
    const reply = cborg.decode(cbor);
    if (reply.v !== 1) throw new Error(`reply version ${reply.v}`);
    if (reply.err) throw new Error(`${op}: ${reply.err.code}: ${reply.err.message}`);
    return reply.ok;
  }
}

// Negentropy v1 (github.com/hoytech/negentropy, NIP-77), the initiator with an empty
// set, written from the spec: varints are base 128, most significant digit first, and
// BigInt (loomdb's timestamps are 64-bit hybrid logical clocks).
function readVarint(buf, pos) {
  let value = 0n;
  for (;;) {
    if (pos.at >= buf.length) throw new Error("negentropy: truncated varint");
    const b = buf[pos.at++];
    value = (value << 7n) | BigInt(b & 0x7f);
    if (!(b & 0x80)) return value;
  }
}

function writeVarint(value) {
  const digits = [Number(value & 0x7fn)];
  for (value >>= 7n; value > 0n; value >>= 7n) digits.push(Number(value & 0x7fn) | 0x80);
  return Uint8Array.from(digits.reverse());
}

const EMPTY_FINGERPRINT = createHash("sha256")
  .update(concat(new Uint8Array(32), writeVarint(0n)))
  .digest()
  .subarray(0, 16);

// One reply from the responder: the ids it lists (all "need": this side holds
// nothing) and our next message (null when every range is settled).
function answer(reply) {
  if (reply[0] !== NEGENTROPY_V1) throw new Error(`negentropy version 0x${reply[0].toString(16)}`);
  const pos = { at: 1 };
  const need = [];
  const out = [Uint8Array.of(NEGENTROPY_V1)];
  let theirLast = 0n; // timestamps are deltas from the previous bound of the same message
  let ourLast = 0n;
  let lower = null; // the lower bound of the range at hand (null: the very start)
  let skipOwed = false;
  const bound = (b) => {
    if (b.infinite) return Uint8Array.of(0, 0);
    const delta = b.ts - ourLast + 1n;
    ourLast = b.ts;
    return concat(writeVarint(delta), writeVarint(BigInt(b.prefix.length)), b.prefix);
  };
  while (pos.at < reply.length) {
    const raw = readVarint(reply, pos);
    const upper = { infinite: raw === 0n, ts: raw === 0n ? 0n : theirLast + raw - 1n };
    if (!upper.infinite) theirLast = upper.ts;
    const len = Number(readVarint(reply, pos));
    upper.prefix = reply.subarray(pos.at, pos.at + len);
    pos.at += len;
    const mode = Number(readVarint(reply, pos));
    let open = false;
    if (mode === 0) {
      // Skip: settled
    } else if (mode === 1) {
      const fp = reply.subarray(pos.at, pos.at + 16);
      pos.at += 16;
      open = !equal(fp, EMPTY_FINGERPRINT); // it holds items here: we list ours (none)
    } else if (mode === 2) {
      const count = Number(readVarint(reply, pos));
      for (let i = 0; i < count; i++) need.push(reply.slice(pos.at + 32 * i, pos.at + 32 * (i + 1)));
      pos.at += 32 * count;
    } else {
      throw new Error(`negentropy: unknown mode ${mode}`);
    }
    if (pos.at > reply.length) throw new Error("negentropy: truncated message");
    if (open) {
      if (skipOwed) out.push(bound(lower), writeVarint(0n));
      out.push(bound(upper), writeVarint(2n), writeVarint(0n));
      skipOwed = false;
    } else {
      skipOwed = true;
    }
    lower = upper;
  }
  return { need, next: out.length > 1 ? concat(...out) : null };
}

async function sync(client, space, collection, frameLimit) {
  const hello = await client.call("hello");
  const set = [space, collection, null];
  // The empty set's first message: one range to infinity, an IdList of no ids.
  let message = Uint8Array.from([NEGENTROPY_V1, 0, 0, 2, 0]);
  const need = [];
  let rounds = 0;
  while (message) {
    if (++rounds > MAX_ROUNDS) throw new Error("reconcile: too many rounds");
    const [[reply]] = await client.call("reconcile", { sets: [[set, message, false, frameLimit]] });
    const step = answer(reply);
    need.push(...step.need);
    message = step.next;
  }
  const cids = need.map((id) => concat(CID_PREFIX, id));
  const entries = [];
  let asked = 0;
  while (asked < cids.length) {
    const batch = cids.slice(asked, asked + GET_BATCH);
    const got = await client.call("get", { cids: batch, max_bytes: MAX_FRAME });
    if (!Array.isArray(got) || got.length === 0) throw new Error("get: no entries");
    for (const [i, raw] of got.entries()) {
      entries.push(raw === null ? { cid: CID.decode(batch[i]).toString(), missing: true } : await checkEntry(raw, batch[i]));
    }
    asked += got.length; // a reply may hold a prefix: ask again for the rest
  }
  return { event: "sync", hello, set, frame_limit: frameLimit, rounds, need: cids.map((c) => CID.decode(c).toString()), entries, requests: client.requests };
}

// --- main ---------------------------------------------------------------------------------

try {
  const node = await createLibp2p({
    addresses: { listen: [] },
    transports: [tcp(), webSockets()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify(), pubsub: gossipsub({ allowPublishToZeroTopicPeers: true }) },
  });
  node.services.pubsub.addEventListener("message", (evt) => {
    if (evt.detail.topic === topic) onGossip(evt.detail).catch(fail);
  });
  node.services.pubsub.subscribe(topic);
  const ma = multiaddr(addrText);
  if (typeof WebSocket === "undefined" && ma.getComponents().some((c) => c.name === "ws")) {
    throw new Error("no global WebSocket (Node < 22): run node with --experimental-websocket");
  }
  const dialStart = performance.now();
  const connection = await node.dial(ma);
  const dialMs = performance.now() - dialStart;
  print({
    event: "connected",
    self: node.peerId.toString(),
    peer: connection.remotePeer.toString(),
    expected_peer: ma.getComponents().findLast((c) => c.name === "p2p")?.value ?? null,
    remote_addr: connection.remoteAddr.toString(),
    encryption: connection.encryption,
    multiplexer: connection.multiplexer,
    dial_ms: Math.round(dialMs), // TCP or WebSocket, Noise, Yamux
  });

  let client = null;
  let lastSync = null;
  const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    const [cmd, ...args] = line.trim().split(/\s+/);
    if (cmd === "sync") {
      client ??= new SyncClient(await connection.newStream(SYNC_PROTOCOL));
      const frameLimit = Number(args[2] ?? 1000000);
      const syncStart = performance.now();
      lastSync = await sync(client, args[0], args[1] === "-" ? null : args[1], frameLimit);
      lastSync.elapsed_ms = Math.round(performance.now() - syncStart);
      print(lastSync);
    } else if (cmd === "peers") {
      print({ event: "peers", subscribers: node.services.pubsub.getSubscribers(topic).map(String) });
    } else if (cmd === "quit") {
      break;
    } else if (cmd) {
      throw new Error(`unknown command ${cmd}`);
    }
  }
  const entries = lastSync?.entries ?? [];
  print({
    event: "report",
    gossip: gossip.length,
    gossip_entries_canonical: gossip.filter((g) => g.canonical).length,
    synced: entries.length,
    synced_cids_matching: entries.filter((e) => e.cid_matches).length,
    streams: connection.streams.map((s) => s.protocol).sort(), // the protocols in use
    // the addresses the node advertised (identify)
    peer_addrs: (await node.peerStore.get(connection.remotePeer)).addresses.map((a) => a.multiaddr.toString()),
  });
  await node.stop();
  exit(0);
} catch (err) {
  fail(err);
}
