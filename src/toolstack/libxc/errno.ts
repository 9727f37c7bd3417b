// Names for the -errno values Xen's operations return, for messages people read.

import { XEN_ERRNO } from "../../abi/xen.ts";

const NAMES = new Map<number, string>(Object.entries(XEN_ERRNO).map(([name, value]) => [value, name]));

/** "-EINVAL" for -22; the number itself when Xen has no name for it. */
export function errnoName(rc: number): string {
  const name = NAMES.get(-rc);
  return name ? `-${name}` : String(rc);
}
