// The receiving node's side of `rnode serve` above the transport: what it checks of every object a peer sends
// before its store gets it (ObjectValidator, the transport's ObjectChecks), by the rules of src/repository's formats.
export { ObjectValidator } from './validate.js';
