// Test harness: a hypervisor with "bare" guests whose vCPUs a test drives by hand. A bare
// guest's code does nothing by itself; the test makes hypercalls on its vCPUs and puts struct
// arguments in its kernel direct map, as a guest kernel would.

import type { GuestCpu, GuestImage } from "../src/abi/cpu.ts";
import { type GuestWidth, layoutFor } from "../src/abi/layout.ts";
import { _PAGE_PRESENT, pagingLevels, pteHi, pteLo, pteMfn, tableIndex } from "../src/abi/x86.ts";
import { HYPERVISOR, XEN_PAGE_SIZE } from "../src/abi/xen.ts";
import type { Domain } from "../src/hypervisor/domain.ts";
import { Hypervisor } from "../src/hypervisor/hypervisor.ts";
import { guestAddressOk } from "../src/hypervisor/tlb.ts";
import type { Vcpu } from "../src/hypervisor/vcpu.ts";


/** An image with no code of its own: entries and callbacks just count. */
export class BareImage implements GuestImage {
  readonly entry = 0x1000;
  upcalls = 0;
  enter(address: number, _cpu: GuestCpu): void {
    if (address === 0x2000) this.upcalls++;
  }
  resume(): void {}
}

export interface BareDomain {
  d: Domain;
  v0: Vcpu;
  image: BareImage;
  /** Virtual address of a scratch page (pfn 1) for op structs. */
  arg: number;
  /** Virtual address of pfn `n`. */
  va(pfn: number): number;
}

export function newHypervisor(seed = 1, nrPcpus = 2): Hypervisor {
  return new Hypervisor({ nrFrames: 1 << 16, sched: { nrPcpus, seed } });
}

/** A running domain with `vcpus` vCPUs, all up, event callback at 0x2000. */
export function bareDomain(
  hv: Hypervisor,
  opts: { width?: GuestWidth; vcpus?: number; pages?: number; maxPort?: number; privileged?: boolean } = {},
): BareDomain {
  const width = opts.width ?? 64;
  const image = new BareImage();
  const d = hv.createDomain(
    {
      name: `bare${hv.domains.size}`,
      width,
      maxVcpus: opts.vcpus ?? 2,
      // Room past the pages a test uses for the pagetables installPagetables puts at the end.
      nrPages: (opts.pages ?? 64) + 16,
      maxEvtchnPort: opts.maxPort ?? 1023,
      privileged: opts.privileged ?? false,
    },
    image,
  );
  installPagetables(hv, d, image.entry);
  for (const v of d.vcpus) {
    v.initialised = true;
    v.down = false;
    v.started = true;
    v.eventCallback = 0x2000;
  }
  hv.unpauseDomain(d);
  const base = layoutFor(width).PAGE_OFFSET;
  const va = (pfn: number) => base + pfn * XEN_PAGE_SIZE;
  return { d, v0: d.vcpus[0]!, image, arg: va(1), va };
}

/** Addresses tests map single pages at with update_va_mapping: they get L1 tables up front. */
export const TEST_SINGLE_PAGE_VAS = [0x400000, 0x500000, 0x600000, -0x778000000000 - 0x200000, 0xf5000000] as const;

/**
 * Maps every page of `d` at PAGE_OFFSET, and gives TEST_SINGLE_PAGE_VAS empty L1 tables, with
 * pagetables taken from its last pages (mapped read-only) and pinned; makes them every vCPU's
 * base pointer and sets vCPU 0's entry. Returns the root's mfn.
 */
export function installPagetables(hv: Hypervisor, d: Domain, entry: number): number {
  const width = d.width;
  const pages = d.p2m.length;
  const base = layoutFor(width).PAGE_OFFSET;
  const tables = new Set<number>();
  let next = pages - 1;
  const alloc = () => {
    const pfn = next--;
    tables.add(pfn);
    hv.memory.u32(d.p2m[pfn]!).fill(0);
    return pfn;
  };
  const put = (table: number, slot: number, target: number, flags: number) => {
    const w = hv.memory.u32(d.p2m[table]!);
    w[slot * 2] = pteLo(d.p2m[target]!, flags);
    w[slot * 2 + 1] = pteHi(d.p2m[target]!);
  };
  const root = alloc();
  const l1For = (va: number): number => {
    let table = root;
    for (let level = pagingLevels(width); level >= 2; level--) {
      const slot = tableIndex(width, va, level);
      const w = hv.memory.u32(d.p2m[table]!);
      if ((w[slot * 2]! & _PAGE_PRESENT) === 0) {
        const child = alloc();
        put(table, slot, child, width === 32 && level === 3 ? _PAGE_PRESENT : 0x67);
      }
      table = pteMfnToPfn(d, w[slot * 2]!, w[slot * 2 + 1]!);
    }
    return table;
  };
  const l1s: number[] = [];
  for (let pfn = 0; pfn < pages; pfn++) l1s.push(l1For(base + pfn * XEN_PAGE_SIZE));
  for (const va of TEST_SINGLE_PAGE_VAS) if (guestAddressOk(width, va)) l1For(va);
  for (let pfn = 0; pfn < pages; pfn++) {
    put(l1s[pfn]!, tableIndex(width, base + pfn * XEN_PAGE_SIZE, 1), pfn, tables.has(pfn) ? 0x61 : 0x63);
  }
  const rootMfn = d.p2m[root]!;
  if (hv.pinTableFor(d, rootMfn, width === 64 ? 4 : 3) < 0) throw new Error("pinning the test pagetables failed");
  if (hv.setBootContext(d, entry, 0, rootMfn) < 0) throw new Error("base pointer refused");
  for (const v of d.vcpus) {
    if (v.guestTable === 0 && hv.mm.getPageAndType(rootMfn, width === 64 ? 4 : 3, d) === 0) v.guestTable = rootMfn;
  }
  return rootMfn;
}

function pteMfnToPfn(d: Domain, lo: number, hi: number): number {
  const mfn = pteMfn(lo, hi);
  const pfn = d.p2m.indexOf(mfn);
  if (pfn < 0) throw new Error(`test pagetables: mfn ${mfn} is not the domain's`);
  return pfn;
}

/** HYPERVISOR_event_channel_op(cmd, arg) from `v`, with `fill` writing the struct first. */
export function evtchnOp(v: Vcpu, cmd: number, arg: number, fill: (cpu: Vcpu) => void = () => {}): number {
  fill(v);
  return v.hypercall(HYPERVISOR.event_channel_op, cmd, arg);
}
