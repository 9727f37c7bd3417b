// Test harness: a hypervisor with "bare" guests whose vCPUs a test drives by hand. A bare
// guest's code does nothing by itself; the test makes hypercalls on its vCPUs and puts struct
// arguments in its kernel direct map, as a guest kernel would.

import type { GuestCpu, GuestImage } from "../src/abi/cpu.ts";
import { type GuestWidth, layoutFor } from "../src/abi/layout.ts";
import { HYPERVISOR, XEN_PAGE_SIZE } from "../src/abi/xen.ts";
import type { Domain } from "../src/hypervisor/domain.ts";
import { Hypervisor } from "../src/hypervisor/hypervisor.ts";
import type { Vcpu } from "../src/hypervisor/vcpu.ts";
import { buildPagetables, countPagetables } from "../src/toolstack/builder.ts";

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
      nrPages: opts.pages ?? 64,
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

/**
 * Maps every page of `d` at PAGE_OFFSET with pinned pagetables in its last pages, makes them
 * every vCPU's base pointer and sets vCPU 0's entry. Returns the root's mfn.
 */
export function installPagetables(hv: Hypervisor, d: Domain, entry: number): number {
  const pages = d.p2m.length;
  let nrPt = countPagetables(d.width, pages - 4, 0);
  nrPt = countPagetables(d.width, pages - nrPt, 0);
  const root = buildPagetables(hv, d, pages - nrPt, nrPt, pages);
  if (hv.setBootContext(d, entry, 0, root) < 0) throw new Error("base pointer refused");
  for (const v of d.vcpus) {
    if (v.guestTable === 0 && hv.mm.getPageAndType(root, d.width === 64 ? 4 : 3, d) === 0) v.guestTable = root;
  }
  return root;
}

/** HYPERVISOR_event_channel_op(cmd, arg) from `v`, with `fill` writing the struct first. */
export function evtchnOp(v: Vcpu, cmd: number, arg: number, fill: (cpu: Vcpu) => void = () => {}): number {
  fill(v);
  return v.hypercall(HYPERVISOR.event_channel_op, cmd, arg);
}
