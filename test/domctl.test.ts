// domctl, sysctl and privcmd: the toolstack's door into Xen. Each operation, its error paths
// (unprivileged caller, unknown domain, bad vCPU, bad frame) with Xen 4.17's errnos, context
// round trips for both widths, and getpageframeinfo3 against the MMU's own page types.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { decodeGetdomaininfo, DOMINF, PFINFO } from "../src/abi/domctl.ts";
import type { GuestWidth } from "../src/abi/layout.ts";
import { DOMID_FIRST_RESERVED, SHUTDOWN, VIRQ, XEN_ERRNO as E } from "../src/abi/xen.ts";
import { XenLinux } from "../src/guest/kernel.ts";
import { buildMachine, loadScenario } from "../src/harness/scenario.ts";
import { DOMID_XEN, openPrivcmd, PROT_READ, PROT_WRITE, type Privcmd } from "../src/hypervisor/domctl.ts";
import { Hypervisor } from "../src/hypervisor/hypervisor.ts";
import { PGT, PGT_TYPE_MASK } from "../src/hypervisor/page_info.ts";
import { buildDomain } from "../src/toolstack/libxc/builder.ts";
import { BareImage } from "./harness.ts";

function machine(): { hv: Hypervisor; xen: Privcmd } {
  const hv = new Hypervisor({ nrFrames: 1 << 15, firstDomid: 1, sched: { nrPcpus: 2, seed: 1 } });
  return { hv, xen: openPrivcmd(hv, DOMID_XEN) };
}

/** A guest built the way the toolstack builds one. */
function guest(xc: Privcmd, width: GuestWidth = 64, vcpus = 2) {
  return buildDomain(xc, { name: "g", memoryMiB: 4, vcpus, width, maxEventChannels: 1023, cmdline: "", privileged: false }, new XenLinux(width));
}

function info(xc: Privcmd, domid: number) {
  const raw = xc.getdomaininfo(domid);
  assert.equal(typeof raw, "object", `getdomaininfo(${domid}) gave ${String(raw)}`);
  return decodeGetdomaininfo(raw as Uint8Array);
}

describe("callers are checked as Xen's dummy XSM policy does", () => {
  test("an unprivileged domain gets -EPERM from every operation", () => {
    const { hv, xen } = machine();
    const target = guest(xen).domid;
    const domu = guest(xen).domid;
    const xc = openPrivcmd(hv, domu);
    const ops: [string, () => unknown][] = [
      ["createdomain", () => xc.createdomain({ maxVcpus: 1, maxEvtchnPort: 1023 }, new BareImage())],
      ["max_vcpus", () => xc.max_vcpus(target, 2)],
      ["max_mem", () => xc.max_mem(target, 1024)],
      ["destroydomain", () => xc.destroydomain(target)],
      ["pausedomain", () => xc.pausedomain(target)],
      ["unpausedomain", () => xc.unpausedomain(target)],
      ["resumedomain", () => xc.resumedomain(target)],
      ["getdomaininfo", () => xc.getdomaininfo(target)],
      ["getvcpuinfo", () => xc.getvcpuinfo(target, 0)],
      ["getvcpucontext", () => xc.getvcpucontext(target, 0)],
      ["setvcpucontext", () => xc.setvcpucontext(target, 0, new Uint8Array(8))],
      ["getpageframeinfo3", () => xc.getpageframeinfo3(target, [1])],
      ["gettscinfo", () => xc.gettscinfo(target)],
      ["settscinfo", () => xc.settscinfo(target, { mode: 0, gtscKhz: 0, incarnation: 0, elapsedNsec: 0 })],
      ["set_address_size", () => xc.set_address_size(target, 32)],
      ["get_address_size", () => xc.get_address_size(target)],
      ["set_virq_handler", () => xc.set_virq_handler(target, VIRQ.DOM_EXC)],
      ["populate_physmap", () => xc.populate_physmap(target, [4096])],
      ["evtchn_alloc_unbound", () => xc.evtchn_alloc_unbound(target, 0)],
      ["pin_table", () => xc.pin_table(target, 1, 1)],
      ["map_foreign_pages", () => xc.map_foreign_pages(target, PROT_READ, [1])],
      ["getdomaininfolist", () => xc.getdomaininfolist(0, 10)],
      ["readconsole", () => xc.readconsole(false)],
      ["debug_keys", () => xc.debug_keys("h")],
      ["physinfo", () => xc.physinfo()],
    ];
    for (const [name, op] of ops) assert.equal(op(), -E.EPERM, name);
    assert.equal(hv.domains.size, 2, "nothing was created or destroyed");
  });

  test("an unknown domain is -ESRCH; a privileged caller that is gone is -EPERM", () => {
    const { hv, xen } = machine();
    for (const op of [
      () => xen.max_vcpus(77, 1),
      () => xen.destroydomain(77),
      () => xen.pausedomain(77),
      () => xen.unpausedomain(77),
      () => xen.getvcpucontext(77, 0),
      () => xen.setvcpucontext(77, 0, new Uint8Array(8)),
      () => xen.getpageframeinfo3(77, [1]),
      () => xen.map_foreign_pages(77, PROT_READ, [1]),
      () => xen.populate_physmap(77, [0]),
      () => xen.evtchn_alloc_unbound(77, 0),
    ]) {
      assert.equal(op(), -E.ESRCH);
    }
    assert.equal(xen.getdomaininfo(5), -E.ESRCH, "no domain at or above 5");
    assert.equal(openPrivcmd(hv, 12).getdomaininfo(1), -E.EPERM);
  });
});

describe("domain lifecycle", () => {
  test("createdomain, max_vcpus, max_mem, populate_physmap, getdomaininfo", () => {
    const { xen } = machine();
    const handle = Uint8Array.from({ length: 16 }, (_, i) => i * 17);
    const domid = xen.createdomain({ maxVcpus: 3, maxEvtchnPort: 1023, handle }, new BareImage());
    assert.equal(domid, 1);
    let i = info(xen, domid);
    assert.equal(i.domain, 1);
    assert.equal(i.flags & DOMINF.paused, DOMINF.paused, "a new domain is paused");
    assert.equal((i.flags >>> DOMINF.shutdownshift) & DOMINF.shutdownmask, 0xff, "4.17 reports SHUTDOWN_CODE_INVALID for a domain that never shut down");
    assert.equal(i.totPages, 0);
    assert.equal(i.maxVcpuId, 0xffffffff, "no vCPUs before max_vcpus");
    assert.deepEqual([...i.handle], [...handle]);
    assert.equal(xen.max_vcpus(domid, 2), -E.EINVAL, "max_vcpus must match createdomain");
    assert.equal(xen.max_vcpus(domid, 3), 0);
    assert.equal(info(xen, domid).maxVcpuId, 2);
    assert.equal(xen.populate_physmap(domid, [0]), -E.ENOMEM, "max_mem is 0 until set");
    assert.equal(xen.max_mem(domid, 64), 0);
    const mfns = xen.populate_physmap(domid, Array.from({ length: 16 }, (_, p) => p));
    assert.ok(Array.isArray(mfns) && mfns.length === 16);
    assert.equal(xen.populate_physmap(domid, [16]), -E.ENOMEM, "beyond max_mem");
    assert.equal(xen.populate_physmap(domid, [-1]), -E.EINVAL);
    i = info(xen, domid);
    assert.equal(i.totPages, 16);
    assert.equal(i.maxPages, 16);
    assert.equal(xen.createdomain({ maxVcpus: 0, maxEvtchnPort: 1023 }, new BareImage()), -E.EINVAL);
    assert.equal(xen.createdomain({ maxVcpus: 1, maxEvtchnPort: 1023 }, new BareImage(), domid), -E.EEXIST);
    assert.equal(xen.getdomaininfo(DOMID_FIRST_RESERVED), -E.EINVAL);
  });

  test("getdomaininfo finds the next domain at or above the id asked for, as 4.17 does", () => {
    const { xen } = machine();
    const a = guest(xen).domid;
    const b = guest(xen).domid;
    xen.destroydomain(a);
    assert.equal(info(xen, a).domain, b);
    const list = xen.getdomaininfolist(0, 10);
    assert.ok(Array.isArray(list));
    assert.deepEqual(
      list.map((r) => decodeGetdomaininfo(r).domain),
      [b],
    );
  });

  test("pause and unpause are counted; a domain cannot pause or destroy itself", () => {
    const { hv, xen } = machine();
    const dom0 = xen.createdomain({ maxVcpus: 1, maxEvtchnPort: 1023, privileged: true }, new BareImage());
    const xc = openPrivcmd(hv, dom0);
    const d = guest(xen).domid;
    assert.equal(info(xc, d).flags & DOMINF.paused, DOMINF.paused);
    assert.equal(xc.unpausedomain(d), 0);
    assert.equal(info(xc, d).flags & DOMINF.paused, 0);
    assert.equal(xc.unpausedomain(d), -E.EINVAL, "no pause left to drop");
    assert.equal(xc.pausedomain(d), 0);
    assert.equal(xc.pausedomain(d), 0);
    assert.equal(xc.unpausedomain(d), 0);
    assert.equal(info(xc, d).flags & DOMINF.paused, DOMINF.paused, "still paused once");
    assert.equal(xc.pausedomain(dom0), -E.EINVAL);
    assert.equal(xc.destroydomain(dom0), -E.EINVAL);
    assert.equal(xc.destroydomain(d), 0);
    assert.equal(xc.getdomaininfo(d), -E.ESRCH);
  });

  test("resumedomain runs a shut-down domain again and clears its shutdown code", () => {
    const { hv, xen } = machine();
    const d = guest(xen).domid;
    hv.shutdownDomain(hv.domainById(d)!, SHUTDOWN.suspend);
    let i = info(xen, d);
    assert.equal(i.flags & DOMINF.shutdown, DOMINF.shutdown);
    assert.equal((i.flags >>> DOMINF.shutdownshift) & DOMINF.shutdownmask, SHUTDOWN.suspend);
    assert.equal(xen.resumedomain(d), 0);
    i = info(xen, d);
    assert.equal(i.flags & DOMINF.shutdown, 0);
    assert.equal((i.flags >>> DOMINF.shutdownshift) & DOMINF.shutdownmask, 0xff);
  });
});

describe("vCPU contexts", () => {
  for (const width of [64, 32] as const) {
    test(`getvcpucontext and setvcpucontext round-trip exactly (${width}-bit)`, () => {
      const { xen } = machine();
      const b = guest(xen, width);
      const ctx = xen.getvcpucontext(b.domid, 0);
      assert.ok(ctx instanceof Uint8Array);
      assert.equal(xen.setvcpucontext(b.domid, 0, ctx), 0);
      assert.deepEqual(xen.getvcpucontext(b.domid, 0), ctx);
      assert.equal(xen.get_address_size(b.domid), width);
    });
  }

  test("bad vCPUs and contexts", () => {
    const { xen } = machine();
    const b = guest(xen, 64, 2);
    assert.equal(xen.getvcpucontext(b.domid, 1), -E.ENODATA, "vCPU 1 has no context yet");
    assert.equal(xen.getvcpucontext(b.domid, 2), -E.EINVAL);
    assert.equal(xen.getvcpucontext(b.domid, -1), -E.EINVAL);
    assert.equal(xen.setvcpucontext(b.domid, 2, new Uint8Array(5168)), -E.EINVAL);
    assert.equal(xen.getvcpuinfo(b.domid, 2), -E.EINVAL);
    const v = xen.getvcpuinfo(b.domid, 0);
    assert.ok(typeof v === "object" && v.online && !v.running);
  });

  test("a null context resets the vCPU (vcpu_reset): its base pointer lets go of the root", () => {
    const { hv, xen } = machine();
    const b = guest(xen, 64, 1);
    const root = [...b.p2m].find((f) => hv.mm.pages.pinned(f))!;
    const typeRefs = hv.mm.pages.typeCount[root]!;
    assert.equal(xen.setvcpucontext(b.domid, 0, null), 0);
    assert.equal(xen.getvcpucontext(b.domid, 0), -E.ENODATA);
    assert.equal(hv.mm.pages.typeCount[root], typeRefs - 1);
    const info0 = xen.getvcpuinfo(b.domid, 0);
    assert.ok(typeof info0 === "object" && !info0.online);
  });

  test("set_address_size", () => {
    const { xen } = machine();
    const d = xen.createdomain({ maxVcpus: 1, maxEvtchnPort: 1023 }, new BareImage());
    assert.equal(xen.set_address_size(d, 48), -E.EINVAL);
    assert.equal(xen.set_address_size(d, 64), 0);
    assert.equal(xen.set_address_size(d, 32), 0);
    assert.equal(xen.get_address_size(d), 32);
    assert.equal(xen.set_address_size(d, 64), -E.EINVAL, "no way back from compat");
  });
});

describe("memory: foreign mappings and page types", () => {
  test("a mapping sees the guest's frame, holds references, and refuses pagetables writable", () => {
    const { hv, xen } = machine();
    const b = guest(xen);
    const other = guest(xen);
    const mfn = b.p2m[b.storePfn]!;
    const before = hv.mm.pages.count[mfn]!;
    const m = xen.map_foreign_pages(b.domid, PROT_READ | PROT_WRITE, [mfn]);
    assert.ok(typeof m === "object");
    assert.equal(hv.mm.pages.count[mfn], before + 1);
    m.u8(0)[100] = 0x5a;
    assert.equal(hv.memory.u8(mfn)[100], 0x5a);
    m.unmap();
    assert.equal(hv.mm.pages.count[mfn], before);
    assert.throws(() => m.u8(0), /after unmap/);
    const ro = xen.map_foreign_pages(b.domid, PROT_READ, [b.p2m[b.startInfoPfn]!]);
    assert.ok(typeof ro === "object" && ro.u8(0)[0] === "x".charCodeAt(0), "start_info's magic, read-only");
    ro.unmap();
    const pinned = [...b.p2m].find((f) => hv.mm.pages.pinned(f))!;
    assert.equal(xen.map_foreign_pages(b.domid, PROT_READ | PROT_WRITE, [mfn, pinned]), -E.EINVAL, "a pagetable cannot be mapped writable");
    assert.equal(hv.mm.pages.count[mfn], before + 0, "all or nothing");
    assert.equal(xen.map_foreign_pages(b.domid, PROT_READ, [other.p2m[0]!]), -E.EINVAL, "another domain's frame");
    assert.equal(xen.map_foreign_pages(b.domid, PROT_READ, [hv.memory.nrFrames]), -E.EINVAL, "beyond memory");
  });

  test("getpageframeinfo3 reports the types the MMU has, on a running SMP guest", () => {
    const sc = loadScenario(fileURLToPath(new URL("../examples/smp-forkexec.cfg", import.meta.url)));
    const m = buildMachine(sc, 3);
    m.hv.run(30e6);
    const xen = openPrivcmd(m.hv, DOMID_XEN);
    let tables = 0;
    let pinned = 0;
    for (const d of m.hv.domains.values()) {
      for (let at = 0; at < d.p2m.length; at += 1024) {
        const mfns = d.p2m.subarray(at, at + 1024);
        const types = xen.getpageframeinfo3(d.domid, mfns);
        assert.ok(types instanceof Uint32Array);
        for (let i = 0; i < mfns.length; i++) {
          const mfn = mfns[i]!;
          const p = m.hv.mm.pages;
          const level = ([PGT.l1, PGT.l2, PGT.l3, PGT.l4] as number[]).indexOf(p.type[mfn]! & PGT_TYPE_MASK) + 1;
          const want = p.pinned(mfn) ? (((level << 28) | PFINFO.LPINTAB) >>> 0) : level > 0 && p.validated(mfn) ? level << 28 : PFINFO.NOTAB;
          assert.equal(types[i], want, `d${d.domid} pfn ${at + i} mfn ${mfn}: ${p.describe(mfn)}`);
          if (level > 0 && p.validated(mfn)) tables++;
          if (p.pinned(mfn)) pinned++;
        }
      }
      const xtab = xen.getpageframeinfo3(d.domid, [d.sharedInfoMfn, m.hv.memory.nrFrames + 5]);
      assert.deepEqual([...(xtab as Uint32Array)], [PFINFO.XTAB, PFINFO.XTAB], "Xen's own page and a frame beyond RAM");
    }
    assert.ok(tables > 30 && pinned > 2, `a real mix of types (${tables} tables, ${pinned} pinned)`);
    assert.equal(xen.getpageframeinfo3(1, new Uint32Array(1025)), -E.E2BIG);
  });
});

describe("the rest of domctl and sysctl", () => {
  test("tsc info: settscinfo bumps the incarnation; elapsed time continues from what was set", () => {
    const { hv, xen } = machine();
    const d = guest(xen).domid;
    assert.equal(xen.settscinfo(d, { mode: 7, gtscKhz: 0, incarnation: 0, elapsedNsec: 0 }), -E.EINVAL);
    assert.equal(xen.settscinfo(d, { mode: 0, gtscKhz: 2_000_000, incarnation: 4, elapsedNsec: 5e9 }), 0);
    hv.sched.spend(1000);
    const t = xen.gettscinfo(d);
    assert.ok(typeof t === "object");
    assert.equal(t.incarnation, 5);
    assert.equal(t.gtscKhz, 2_000_000);
    assert.ok(t.elapsedNsec >= 5e9 && t.elapsedNsec < 5e9 + 1e6);
  });

  test("set_virq_handler takes global VIRQs only", () => {
    const { hv, xen } = machine();
    const d = guest(xen).domid;
    assert.equal(xen.set_virq_handler(d, VIRQ.TIMER), -E.EINVAL);
    assert.equal(xen.set_virq_handler(d, 99), -E.EINVAL);
    assert.equal(xen.set_virq_handler(d, VIRQ.DOM_EXC), 0);
    assert.equal(hv.globalVirqHandlers.get(VIRQ.DOM_EXC), d);
  });

  test("alloc_unbound for another domain, readconsole with clear, debug keys, physinfo", () => {
    const { hv, xen } = machine();
    const a = guest(xen).domid;
    const port = xen.evtchn_alloc_unbound(a, 0);
    assert.ok(port > 0);
    assert.equal(hv.domainById(a)!.evtchn.remoteDom[port], 0);
    assert.equal(xen.debug_keys("h"), 0);
    const lines = xen.readconsole(true);
    assert.ok(Array.isArray(lines) && lines.some((l) => l.text.includes("'h' pressed")));
    assert.deepEqual(xen.readconsole(false), []);
    const p = xen.physinfo();
    assert.ok(typeof p === "object" && p.nrCpus === 2 && p.totalPages === 1 << 15 && p.freePages < p.totalPages);
  });
});
