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

export interface ObjectChecks {
  /** Resolves to the object's kind when it may be stored; throws RNODE_TRANSPORT_REJECTED when not. */
  checkPut(p: PutCheck): Promise<{ kind: string }>;
  /** Throws RNODE_TRANSPORT_REJECTED unless a peer may delete the object. */
  checkDelete(key: string): void;
  /** The kind of object a key names ('lease', 'pack', ...), or undefined when it names none. */
  kindOf(key: string): string | undefined;
}
