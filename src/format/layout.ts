// The legacy key layout moved to src/repository/names.ts, the one owner of key names; this re-export keeps older
// imports compiling while callers move over.
export { layout, parseChunkKey, seqFromKey, validateDiskId, vmLayout } from '../repository/names.js';
