// The migration receiver's framer: fed a real migration stream in random pieces, it frames
// exactly the whole stream and reports its end only once libxl's END is in; a stream cut short
// is never complete; a record length no stream can have is refused.

import assert from "node:assert/strict";
import { test } from "node:test";
import fc from "fast-check";
import { StreamFramer } from "../src/toolstack/libxl/stream_framer.ts";
import { BytesSink } from "../src/toolstack/libxc/sr_stream.ts";
import { writeMigrationStream } from "../src/toolstack/libxl/save_restore.ts";
import { retrievedConfig } from "../src/toolstack/xl/host_info.ts";
import { libxlDomainConfig, yajlBeautify } from "../src/toolstack/xl/xl_format.ts";
import * as H from "./sr_harness.ts";

const RUNS = 300;

function liveImage(): Uint8Array {
  const a = H.newHost(3);
  const hd = H.createGuest(a, { width: 64, memory: H.MOMENTS_MEMORY });
  const json = yajlBeautify(libxlDomainConfig(retrievedConfig(a.host, hd.domid)!));
  const sink = new BytesSink();
  const gen = writeMigrationStream(a.host.xc, hd.domid, sink, json, { debug: true });
  for (let r = gen.next(); !r.done; r = gen.next()) {
    if ("suspend" in r.value) H.suspend(a, hd);
    else H.run(a, 0.05);
  }
  return sink.bytes();
}

const image = liveImage();

test(`fed in random pieces, the framer frames the whole stream and ends with it (${RUNS} runs)`, () => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 1, max: 70_000 }), { minLength: 1, maxLength: 400 }), fc.nat(64), (cuts, trailing) => {
      const f = new StreamFramer();
      const out: Uint8Array[] = [];
      let at = 0;
      let i = 0;
      const extra = new Uint8Array(trailing).fill(0xab);
      const all = new Uint8Array(image.length + trailing);
      all.set(image);
      all.set(extra, image.length);
      while (at < all.length) {
        const n = Math.min(cuts[i++ % cuts.length]!, all.length - at);
        f.feed(all.subarray(at, at + n));
        at += n;
        assert.ok(f.framed <= f.buffered);
        if (at < image.length) assert.equal(f.ended, false, `ended after ${at} of ${image.length} bytes`);
        if (i % 3 === 0) out.push(f.take());
      }
      out.push(f.take());
      assert.equal(f.ended, true);
      assert.equal(f.trailing, trailing);
      const total = out.reduce((n, c) => n + c.length, 0);
      assert.equal(total, image.length);
      assert.deepEqual(Buffer.concat(out), Buffer.from(image));
    }),
    { numRuns: RUNS },
  );
});

test("a stream cut short is never complete, and a record too long is refused", () => {
  const f = new StreamFramer();
  f.feed(image.subarray(0, image.length - 1));
  assert.equal(f.ended, false);
  // Up to and including libxl's first record header (LIBXC_CONTEXT, length 0), then the libxc
  // headers and X86_PV_INFO's header, whose length (8) is over this framer's limit.
  const configLen = new DataView(image.buffer, image.byteOffset).getUint32(44, true);
  const bad = image.slice(0, 48 + configLen + 16 + 8 + 24 + 16 + 8);
  const g = new StreamFramer({ maxRecordLength: 4 });
  assert.throws(() => g.feed(bad), /libxc record of 8 bytes \(at most 4\)/);
});
