// Xen's PV clock, read the way Linux's pvclock_clocksource_read does: retry while the version
// is odd or changes, then scale the TSC delta by tsc_to_system_mul and tsc_shift.

import type { GuestCpu } from "../abi/cpu.ts";
import type { Layout } from "../abi/layout.ts";

export function pvclockRead(cpu: GuestCpu, si: DataView, layout: Layout): number {
  const t = cpu.vcpuId * layout.vcpu_info.size + layout.vcpu_info.time;
  const T = layout.vcpu_time_info;
  for (;;) {
    const version = si.getUint32(t + T.version, true);
    const tscStamp = readU64(si, t + T.tsc_timestamp);
    const systemTime = readU64(si, t + T.system_time);
    const mul = si.getUint32(t + T.tsc_to_system_mul, true);
    const shift = si.getInt8(t + T.tsc_shift);
    if (version & 1 || version !== si.getUint32(t + T.version, true)) continue;
    let delta = cpu.rdtsc() - tscStamp;
    delta = shift >= 0 ? delta * 2 ** shift : Math.floor(delta / 2 ** -shift);
    return systemTime + Math.floor((delta * mul) / 0x100000000);
  }
}

function readU64(dv: DataView, off: number): number {
  return dv.getUint32(off, true) + dv.getUint32(off + 4, true) * 0x100000000;
}
