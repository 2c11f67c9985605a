// Instant recovery: a point served as an NBD export, chunks fetched on first read (see docs/export.md).
export { startExport, exportUrl, EXPORT_WARN_EVENTS, type ExportOptions, type ExportStats, type RunningExport } from './export.js';
export { assertOverlayOutsideStore } from './overlay.js';
