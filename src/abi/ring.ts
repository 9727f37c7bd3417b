// Byte rings in shared pages (the xenstore and console rings): a power-of-two area, free-running
// 32-bit producer and consumer indexes, positions taken modulo the size.

/** Copies `n` bytes of `src` into the ring at `base` (of `size` bytes) from index `prod`. */
export function ringPut(page: Uint8Array, base: number, size: number, prod: number, src: Uint8Array, n: number): void {
  const mask = size - 1;
  for (let i = 0; i < n; i++) page[base + ((prod + i) & mask)] = src[i]!;
}

/** The `n` bytes of the ring at `base` (of `size` bytes) from index `cons`. */
export function ringTake(page: Uint8Array, base: number, size: number, cons: number, n: number): Uint8Array {
  const mask = size - 1;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = page[base + ((cons + i) & mask)]!;
  return out;
}
