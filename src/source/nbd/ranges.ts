// Which parts of one read request the server has answered: chunks may come in any order but must not overlap,
// and a reply that claims success must have covered every byte.

export class CoveredRanges {
  // Disjoint, sorted, merged [start, end) pairs; in-order replies keep this at one entry.
  private readonly starts: number[] = [];
  private readonly ends: number[] = [];
  private total = 0;

  get bytes(): number {
    return this.total;
  }

  /** Adds [start, end); false (and nothing added) when it overlaps what is already covered. */
  add(start: number, end: number): boolean {
    if (end <= start) return false;
    // First range whose end is beyond start: the only candidates for overlap or adjacency.
    let lo = 0;
    let hi = this.ends.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ends[mid] < start) lo = mid + 1;
      else hi = mid;
    }
    const i = lo;
    const joinsLeft = i < this.ends.length && this.ends[i] === start;
    const right = joinsLeft ? i + 1 : i;
    if (right < this.starts.length && this.starts[right] < end) return false;
    const joinsRight = right < this.starts.length && this.starts[right] === end;
    if (joinsLeft && joinsRight) {
      this.ends[i] = this.ends[right];
      this.starts.splice(right, 1);
      this.ends.splice(right, 1);
    } else if (joinsLeft) {
      this.ends[i] = end;
    } else if (joinsRight) {
      this.starts[right] = start;
    } else {
      this.starts.splice(i, 0, start);
      this.ends.splice(i, 0, end);
    }
    this.total += end - start;
    return true;
  }
}
