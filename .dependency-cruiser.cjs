// The shape of src/ as a rule (STYLE.md "The shape we want to see in the tree"): no import circles, and arrows
// only downward: cli -> agent -> jobs -> export/serve -> transport ->
// pipeline -> source -> repository/format/crypto -> store -> native. src/errors.ts, src/throttle.ts, src/semaphore.ts, src/version.ts, src/failpoint.ts, src/log.ts and src/metrics are shared leaves.
// Run by `npm run lint` and by test/structure/deps.test.ts (so `npm test` fails with the offending path).

// Folders from top to bottom; a module may import its own folder and any folder below it.
const LAYERS = [
  ['cli'],
  ['agent'],
  ['jobs'],
  ['export', 'output', 'serve'],
  ['transport'],
  ['pipeline'],
  ['source', 'sample'],
  ['repository', 'format', 'crypto'],
  ['store'],
  ['native'],
];

const upward = LAYERS.flatMap((layer, i) => {
  const above = LAYERS.slice(0, i).flat();
  if (above.length === 0) return [];
  return [
    {
      name: `no-upward-from-${layer.join('-')}`,
      comment: `${layer.join(', ')} sit below ${above.join(', ')}: they must not import them (STYLE.md layers)`,
      severity: 'error',
      from: {
        path: `^src/(${layer.join('|')})/`,
      },
      to: { path: `^src/(${above.join('|')})/` },
    },
  ];
});

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment: 'An import circle: two modules that need each other are one module, or a shared part is missing.',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    ...upward,
    {
      name: 'transport-moves-opaque-records',
      comment:
        'The transport never parses chunk, pack, envelope, index, table or manifest bytes: a writer labels a chunk put (PutOptions.chunk), and the receiving node checks objects in src/serve, behind the ObjectChecks interface (src/transport/object-checks.ts).',
      severity: 'error',
      from: { path: '^src/transport/' },
      to: {
        path: '^src/(repository/(pack|envelope|index-file|point-format|domain|claims)|format/(chunk|codecs|manifest|table|seal|codec-kernel)|pipeline/(codec-workers|codec-worker|codec-ops|chunk-codec))[.]ts$',
      },
    },
    {
      name: 'src-not-from-tests',
      comment: 'src/ ships; tests, benchmarks and examples are outside it and never imported by it.',
      severity: 'error',
      from: { path: '^src/' },
      to: { path: '^(test|bench|examples)/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: { exportsFields: ['exports'], conditionNames: ['import', 'require', 'node', 'default'] },
  },
};
