// The control agent's public surface: the agent itself, the protocol (schemas, types, decode) and the
// reference Management Server.
export { Agent, AGENT_VERSION, type AgentOptions } from './agent.js';
export * from './protocol.js';
export { validate, type SchemaError } from './schema.js';
export { Logger, silentLogger, type Level } from '../log.js';
export { AgentMetrics } from './metrics.js';
export { ReferenceMs, type ReferenceMsOptions, type MsNode, type MsJob, type MsReport } from './reference-ms.js';
export { parseListen } from '../metrics/http.js';
