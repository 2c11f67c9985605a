// Stable codes for what can go wrong talking to vSphere, and the mapping of SOAP faults onto them.
import { RnodeError } from '../../../errors.js';

export const VSphereErrorCodes = {
  /** The server certificate does not match the thumbprint, or is not signed by the CA given. */
  TLS: 'RNODE_VSPHERE_TLS',
  /** Wrong user name or password (InvalidLogin), or the session expired (NotAuthenticated). */
  LOGIN: 'RNODE_VSPHERE_LOGIN',
  /** The user may not do this (NoPermission). */
  PERMISSION: 'RNODE_VSPHERE_PERMISSION',
  /** Network-level failure reaching vCenter/ESXi. */
  CONNECT: 'RNODE_VSPHERE_CONNECT',
  /** The VM (or another managed object) does not exist. */
  NOT_FOUND: 'RNODE_VSPHERE_NOT_FOUND',
  /** A task (snapshot, reconfigure...) ended in error. */
  TASK: 'RNODE_VSPHERE_TASK',
  /** Any other SOAP fault; details.fault names it. */
  FAULT: 'RNODE_VSPHERE_FAULT',
  /** The answer was not the SOAP we expected. */
  PROTOCOL: 'RNODE_VSPHERE_PROTOCOL',
  TIMEOUT: 'RNODE_VSPHERE_TIMEOUT',
} as const;

/** A SOAP fault from vSphere: `fault` is its type (FileFault, InvalidArgument, InvalidLogin...). */
export class VSphereFault extends RnodeError {
  readonly fault: string;
  readonly faultString: string;

  constructor(code: string, message: string, fault: string, faultString: string, opts: { cause?: unknown; retryable?: boolean } = {}) {
    super(code, message, { ...opts, details: { fault } });
    this.name = 'VSphereFault';
    this.fault = fault;
    this.faultString = faultString;
  }
}

const HINTS: Record<string, [code: string, hint: string]> = {
  InvalidLogin: [VSphereErrorCodes.LOGIN, 'check the user name and the password file'],
  NotAuthenticated: [VSphereErrorCodes.LOGIN, 'the vSphere session expired or was never opened; run again'],
  NoPermission: [
    VSphereErrorCodes.PERMISSION,
    'give the user the backup privileges (VirtualMachine.State.CreateSnapshot, VirtualMachine.Provisioning.DiskRandomRead...)',
  ],
  ManagedObjectNotFound: [VSphereErrorCodes.NOT_FOUND, 'check the VM MoRef (e.g. vm-42) in the source'],
};

/** Maps a fault type and its text (never anything from the request) to a VSphereFault. */
export function faultError(method: string, fault: string, faultString: string): VSphereFault {
  const [code, hint] = HINTS[fault] ?? [VSphereErrorCodes.FAULT, 'see the vCenter tasks and events for details'];
  const text = faultString ? `: ${faultString}` : '';
  return new VSphereFault(code, `vSphere ${method} failed with ${fault}${text}; ${hint}`, fault, faultString);
}
