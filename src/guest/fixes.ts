// Fixes a run can switch off (`xensim run --disable-fix NAME`), to show what each one prevents.
// The kernel reads them from its command line as xensim.disable_fix=NAME[,NAME].

export const GUEST_FIXES = {
  "unmask-pending":
    "when a port is unmasked locally, an event that arrived while it was masked is raised again " +
    "(2-level: selector bit and upcall_pending set by hand; FIFO: EVTCHNOP_unmask so that Xen links it). " +
    "Without it the edge is lost: Linux 04c44a080d2f and the FIFO clear_masked_cond logic.",
} as const;

export type GuestFix = keyof typeof GUEST_FIXES;

export function isGuestFix(name: string): name is GuestFix {
  return Object.hasOwn(GUEST_FIXES, name);
}

/** The fixes a command-line value disables. */
export function disabledFixes(value: string | undefined): Set<string> {
  return new Set((value ?? "").split(",").filter((s) => s.length > 0));
}
