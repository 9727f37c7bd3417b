// xoshiro128** (Blackman & Vigna). State is a Uint32Array(4), so it can be saved with a machine.

export class Rng {
  readonly s: Uint32Array;

  constructor(seed: number) {
    this.s = new Uint32Array(4);
    // splitmix32 expands the seed so that nearby seeds give unrelated streams.
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
    if ((this.s[0]! | this.s[1]! | this.s[2]! | this.s[3]!) === 0) this.s[0] = 1;
  }

  /** A uniformly distributed unsigned 32-bit integer. */
  nextU32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1]!, 5), 7), 9) >>> 0;
    const t = s[1]! << 9;
    s[2]! ^= s[0]!;
    s[3]! ^= s[1]!;
    s[1]! ^= s[2]!;
    s[0]! ^= s[3]!;
    s[2]! ^= t;
    s[3] = rotl(s[3]!, 11);
    return result;
  }

  /** An integer in [0, n). */
  below(n: number): number {
    if (n <= 1) return 0;
    // Below 2^16 a multiply-shift is exact enough and avoids float division.
    if (n < 0x10000) return ((this.nextU32() >>> 16) * n) >>> 16;
    return Math.floor((this.nextU32() / 0x100000000) * n);
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.nextU32() / 0x100000000 < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)]!;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/**
 * Seeds are what the generator tells apart: it is seeded from 32 bits, so a seed is an integer
 * 0..2^32-1. Anything else is refused rather than reduced, so that no two seeds name one run.
 */
export const MAX_SEED = 0xffffffff;

export function isSeed(n: number): boolean {
  return Number.isInteger(n) && n >= 0 && n <= MAX_SEED;
}

/**
 * A seed written in decimal, read exactly: "4294967297" is refused, not run as seed 1, and
 * nothing goes through a float that could round it. `min` is the smallest accepted (1 for
 * counts such as --seeds). Throws RangeError with a one-line message.
 */
export function parseSeed(text: string, min = 0): number {
  const n = /^[0-9]{1,10}$/.test(text) ? Number(text) : Number.NaN;
  if (!isSeed(n) || n < min) throw new RangeError(`must be an integer ${min}..${MAX_SEED} (seeds are 32-bit)`);
  return n;
}
