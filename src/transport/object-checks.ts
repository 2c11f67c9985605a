// What the receiving node asks of an object before it stores it, as an interface: the transport moves opaque,
// typed records and never parses their bytes; src/serve implements the checks (chunks, packs, envelopes, manifests).

/** One whole object a peer PUT, with what its frame said about it. */
export interface PutCheck {
  key: string;
  data: Buffer;
  /** FrameFlag bits of the PUT frame. */
  flags: number;
  /** The sender's disk offset for a chunk frame (informational). */
  diskOffset: number | null;
  /** The sender's plaintext xxh64 for a chunk frame (must match the chunk header). */
  plainXxh64: bigint;
}

/** How the node may store an object that passed its checks. */
export interface PutVerdict {
  /** The kind of object ('pack', 'table', ...). */
  kind: string;
  /**
   * Written once and never replaced (packs, indexes, manifests...): the node stores it only where its key is free,
   * whatever the peer asked, and takes the same bytes again as a retry. False for what writers rewrite (checkpoints).
   */
  createOnly: boolean;
  /**
   * For a create-only object held with other bytes: whether it may still be replaced (a point's own object while
   * that point is not committed, which a resumed run writes again). Absent: never.
   */
  replaceable?: () => Promise<boolean>;
}

export interface ObjectChecks {
  /** Resolves to how the object may be stored; throws RNODE_TRANSPORT_REJECTED when it may not be. */
  checkPut(p: PutCheck): Promise<PutVerdict>;
  /** Throws RNODE_TRANSPORT_REJECTED unless a peer may delete the object. */
  checkDelete(key: string): void;
  /** The kind of object a key names ('lease', 'pack', ...), or undefined when it names none. */
  kindOf(key: string): string | undefined;
}
