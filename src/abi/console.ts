// The PV console page (io/console.h): the guest writes its console output into `out` and reads
// keyboard input from `in`; xenconsoled is on the other side of console_evtchn.

/** struct xencons_interface. */
export const XENCONS_INTERFACE = {
  in: 0,
  in_size: 1024,
  out: 1024,
  out_size: 2048,
  in_cons: 3072,
  in_prod: 3076,
  out_cons: 3080,
  out_prod: 3084,
  size: 3088,
} as const;
