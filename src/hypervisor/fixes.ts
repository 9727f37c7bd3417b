// Hypervisor fixes a machine can be built without (HypervisorParams.disabledFixes), to show that
// the tests which depend on each one fail without it.

export const HYPERVISOR_FIXES = {
  "logdirty-pt-update":
    "while a domain is in log-dirty mode, a pagetable entry Xen writes for MMU_NORMAL_PT_UPDATE or " +
    "update_va_mapping marks the table's page dirty (sh_validate_guest_entry's paging_mark_dirty). The " +
    "guest maps its pagetables read-only and changes them only this way, so without it a table changed " +
    "after it was last sent (a fault-in, a fork's COW, an munmap) never goes again, and the migrated " +
    "guest runs on stale entries.",
} as const;

export type HypervisorFix = keyof typeof HYPERVISOR_FIXES;

/** The set of fixes `names` switches off; an unknown name is an error. */
export function hypervisorFixesDisabled(names: readonly string[] = []): Set<HypervisorFix> {
  const out = new Set<HypervisorFix>();
  for (const name of names) {
    if (!Object.hasOwn(HYPERVISOR_FIXES, name)) {
      throw new Error(`unknown hypervisor fix '${name}' (known: ${Object.keys(HYPERVISOR_FIXES).join(", ")})`);
    }
    out.add(name as HypervisorFix);
  }
  return out;
}
