/**
 * test-support/pattern.ts — owns the page contents tests and benches place and check: every
 * 32-bit word of page p is a function of (p, word, seed), so a misplaced or torn page shows.
 */

/** Word `w` of page `page`. */
export function patternWord(page: number, w: number, seed: number): number {
  return (Math.imul(page + 1, 0x9e3779b1) ^ Math.imul(w + 1, 0x85ebca6b) ^ seed) >>> 0;
}

/** Fills `words` (one page) with page `page`'s pattern. */
export function fillPattern(words: Uint32Array, page: number, seed: number): void {
  for (let w = 0; w < words.length; w++) words[w] = patternWord(page, w, seed);
}

/** True when `words` holds page `page`'s pattern. */
export function checkPattern(words: Uint32Array, page: number, seed: number): boolean {
  for (let w = 0; w < words.length; w++) if (words[w] !== patternWord(page, w, seed)) return false;
  return true;
}
