// Fixes a run can switch off (`xensim run --disable-fix NAME`), to show what each one prevents.
// The kernel reads them from its command line as xensim.disable_fix=NAME[,NAME].

export const GUEST_FIXES = {
  "unmask-pending":
    "when a port is unmasked locally, an event that arrived while it was masked is raised again " +
    "(2-level: selector bit and upcall_pending set by hand; FIFO: EVTCHNOP_unmask so that Xen links it). " +
    "Without it the edge is lost: Linux 04c44a080d2f and the FIFO clear_masked_cond logic.",
  "drop-mm-ref":
    "before unpinning a dying mm's pagetables, xen_exit_mmap has every other CPU that may still run on " +
    "them (a lazy-TLB reference) switch to swapper_pg_dir, with an IPI it waits for (drop_mm_ref, from the " +
    "SMP seed). Without it Xen refuses to make the pgd writable again while another vCPU's base pointer " +
    "holds it, and the kernel BUGs in xen_mc_flush. The local switch away is kept either way.",
  "stale-cr3":
    "drop_mm_ref also picks the CPUs whose xen_current_cr3 (the pgd Xen really has, updated only when the " +
    "batch with the switch is issued) is the dying pgd, not only those in mm_cpumask (Linux 9f79991d4186). " +
    "Without it a CPU with a context switch still in its lazy batch is missed.",
  "rebind-on-resume":
    "after a restore into a new domain, xen_irq_resume binds every CPU's VIRQs and IPIs again into new " +
    "ports (restore_cpu_virqs, restore_cpu_ipis). Without it the irqs keep no port in the new domain: the " +
    "first IPI after the restore goes nowhere and the timer never fires.",
  "clear-stale-mappings":
    "xen_irq_resume first zaps every irq's port and the whole port-to-irq table, since the new domain's " +
    "port numbers mean nothing of the old ones. Without it an irq whose channel went with the old domain " +
    "still names its old port, which a rebound VIRQ or IPI may now own: the store and console irqs, " +
    "unbound as xenbus and the console resume, close those ports (the timer or an IPI goes silent), and " +
    "notify_remote_via_irq on such an irq signals the wrong channel (the oops after migration that " +
    "Linux fixed by clearing the mappings).",
} as const;

export type GuestFix = keyof typeof GUEST_FIXES;

export function isGuestFix(name: string): name is GuestFix {
  return Object.hasOwn(GUEST_FIXES, name);
}

/** The fixes a command-line value disables. */
export function disabledFixes(value: string | undefined): Set<string> {
  return new Set((value ?? "").split(",").filter((s) => s.length > 0));
}
