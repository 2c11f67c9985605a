// The footer of a fixed VHD (Microsoft's Virtual Hard Disk Image Format Specification): 512 bytes after the data,
// which is all a fixed VHD adds to a raw image. Pure: the Azure page-blob output writes what this returns.
import { randomBytes } from 'node:crypto';

export const VHD_FOOTER_BYTES = 512;
/** Seconds between the Unix epoch and the VHD epoch (2000-01-01T00:00:00Z). */
const VHD_EPOCH = 946684800;

export interface VhdGeometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

/** CHS geometry from the size, by the algorithm of the specification's appendix ("CHS Calculation"). */
export function vhdGeometry(size: number): VhdGeometry {
  let totalSectors = Math.floor(size / 512);
  if (totalSectors > 65535 * 16 * 255) totalSectors = 65535 * 16 * 255;
  let sectorsPerTrack: number;
  let heads: number;
  let cylinderTimesHeads: number;
  if (totalSectors >= 65535 * 16 * 63) {
    sectorsPerTrack = 255;
    heads = 16;
    cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
  } else {
    sectorsPerTrack = 17;
    cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
    heads = Math.floor((cylinderTimesHeads + 1023) / 1024);
    if (heads < 4) heads = 4;
    if (cylinderTimesHeads >= heads * 1024 || heads > 16) {
      sectorsPerTrack = 31;
      heads = 16;
      cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
    }
    if (cylinderTimesHeads >= heads * 1024) {
      sectorsPerTrack = 63;
      heads = 16;
      cylinderTimesHeads = Math.floor(totalSectors / sectorsPerTrack);
    }
  }
  return { cylinders: Math.floor(cylinderTimesHeads / heads), heads, sectorsPerTrack };
}

export interface VhdFooterOptions {
  /** Virtual size in bytes (a multiple of 512). */
  size: number;
  /** Default: now. */
  time?: Date;
  /** 16 bytes; default random. */
  uniqueId?: Uint8Array;
}

/**
 * A fixed-disk footer. Creator application "win ": readers (qemu, Hyper-V, Azure) then take the size from the
 * current-size field rather than from the CHS geometry, which rounds down most sizes (qemu's vpc driver decides
 * by this field); the creator host OS says "Wi2k" to match.
 */
export function vhdFooter(o: VhdFooterOptions): Buffer {
  if (o.size % 512 !== 0) throw new Error(`VHD size ${o.size} is not a multiple of 512`);
  const f = Buffer.alloc(VHD_FOOTER_BYTES);
  f.write('conectix', 0, 'latin1');
  f.writeUInt32BE(0x00000002, 8); // features: the reserved bit, always set
  f.writeUInt32BE(0x00010000, 12); // file format version 1.0
  f.writeBigUInt64BE(0xffffffffffffffffn, 16); // data offset: none for a fixed disk
  const secs = Math.floor((o.time ?? new Date()).getTime() / 1000) - VHD_EPOCH;
  f.writeUInt32BE(Math.max(0, secs) >>> 0, 24);
  f.write('win ', 28, 'latin1'); // creator application (see above)
  f.writeUInt32BE(0x000a0000, 32); // creator version 10.0
  f.write('Wi2k', 36, 'latin1'); // creator host OS
  f.writeBigUInt64BE(BigInt(o.size), 40); // original size
  f.writeBigUInt64BE(BigInt(o.size), 48); // current size
  const g = vhdGeometry(o.size);
  f.writeUInt16BE(g.cylinders, 56);
  f.writeUInt8(g.heads, 58);
  f.writeUInt8(g.sectorsPerTrack, 59);
  f.writeUInt32BE(2, 60); // disk type: fixed
  Buffer.from(o.uniqueId ?? randomBytes(16)).copy(f, 68, 0, 16);
  f.writeUInt8(0, 84); // saved state: no
  f.writeUInt32BE(vhdChecksum(f), 64);
  return f;
}

/** One's complement of the byte sum of the footer, its checksum field counted as zero. */
export function vhdChecksum(footer: Uint8Array): number {
  let sum = 0;
  for (let i = 0; i < VHD_FOOTER_BYTES; i++) if (i < 64 || i > 67) sum += footer[i];
  return ~sum >>> 0;
}
