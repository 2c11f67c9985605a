// The benchmark's sections, in run order. A new one (peer streaming over ws://, cloud emulators, the VMware
// path...) is a module exporting a Section, added to this list; RNODE_BENCH_ONLY selects by name.
import type { Section } from '../lib/context.js';
import { chain } from './chain.js';
import { clouds } from './clouds.js';
import { codec } from './codec.js';
import { dedup } from './dedup.js';
import { agent, encryption, vmware, ws } from './extras.js';
import { instantRecovery } from './instant.js';
import { memory } from './memory.js';
import { nbd } from './nbd.js';
import { prune } from './prune.js';
import { repack } from './repack.js';
import { recovery } from './recovery.js';
import { throughput } from './throughput.js';

export const sections: Section[] = [
  throughput,
  codec,
  memory,
  nbd,
  recovery,
  instantRecovery,
  encryption,
  ws,
  clouds,
  dedup,
  prune,
  repack,
  chain,
  vmware,
  agent,
];
