// placeholder (stage 2)
import type { StoreFactoryContext } from '../registry.js';
import type { ObjectStore } from '../types.js';
import { badStoreUrl } from '../registry.js';
export async function azureStoreFromUrl(url: URL, ctx: StoreFactoryContext): Promise<ObjectStore> { throw badStoreUrl(ctx.location, 'is not supported yet'); }
