// A Negentropy v1 peer backed by nostr-tools (nip77), for loomdb's interop tests.
//
//   node negentropy_peer.mjs initiator|responder [frameSizeLimit]
//
// Reads commands from stdin, one a line; answers on stdout, one a line.
//   item,<timestamp>,<id hex>   add an item (before seal)
//   seal                        sort the items; an initiator then prints msg,<first message>
//   msg,<hex>                   a message from the other side; prints the have,<id> and
//                               need,<id> lines nostr-tools reports, then msg,<reply hex>,
//                               or done (an initiator with nothing more to ask)
//   fingerprint                 prints fingerprint,<hex> of the whole set
//   quit                        exits
// A responder whose nostr-tools reconcile() returns null (nothing left to say) prints
// msg,61: the protocol's version byte alone is the same message on the wire.
import { createInterface } from "node:readline";
import { nip77 } from "nostr-tools";

const { Negentropy, NegentropyStorageVector } = nip77;

const role = process.argv[2];
if (role !== "initiator" && role !== "responder") {
  process.stderr.write("usage: node negentropy_peer.mjs initiator|responder [frameSizeLimit]\n");
  process.exit(2);
}
const frameSizeLimit = process.argv[3] ? Number(process.argv[3]) : 60000;

const storage = new NegentropyStorageVector();
let neg = null;
const out = [];
const flush = () => {
  if (out.length) {
    process.stdout.write(out.join("\n") + "\n");
    out.length = 0;
  }
};

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of lines) {
  if (!line) continue;
  const [cmd, a, b] = line.split(",");
  if (cmd === "item") {
    storage.insert(Number(a), b);
  } else if (cmd === "seal") {
    storage.seal();
    neg = new Negentropy(storage, frameSizeLimit);
    if (role === "initiator") out.push("msg," + neg.initiate());
  } else if (cmd === "msg") {
    const reply = neg.reconcile(
      a,
      (id) => out.push("have," + id),
      (id) => out.push("need," + id),
    );
    if (reply === null) out.push(role === "initiator" ? "done" : "msg,61");
    else out.push("msg," + reply);
  } else if (cmd === "fingerprint") {
    const fp = storage.fingerprint(0, storage.size());
    out.push("fingerprint," + Buffer.from(fp).toString("hex"));
  } else if (cmd === "quit") {
    break;
  } else {
    process.stderr.write("unknown command: " + cmd + "\n");
    process.exit(2);
  }
  flush();
}
flush();
