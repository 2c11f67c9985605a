// ESLint for the TypeScript tree: typescript-eslint's recommended rules, type-aware for src/, bench/ and examples/
// (each in a tsconfig), syntax-only for tests. Rules the existing tree breaks by design are off below, each with its reason;
// `npm run lint` runs this and dependency-cruiser.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'native/**', 'node_modules/**', 'coverage/**', '.tap/**', 'prebuilds/**', '**/*.cjs', '**/*.mjs'] },
  js.configs.recommended,
  // A `let` assigned once after closures that read it (agent.ts wires callbacks before the object exists).
  { rules: { 'prefer-const': ['error', { ignoreReadBeforeAssign: true }] } },
  {
    files: ['src/**/*.ts', 'bench/**/*.ts', 'examples/**/*.ts'],
    extends: [tseslint.configs.recommendedTypeChecked],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      // Unhandled promises are real bugs; `void` marks the deliberate fire-and-forget ones.
      '@typescript-eslint/no-floating-promises': 'error',
      // Parsed JSON and wire messages are validated where they enter, then narrowed by hand: the any-flow rules
      // would flag every such step (hundreds of findings) without finding bugs. Kept: no-explicit-any below.
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      // Templates with numbers and errors in messages are intended (`${err}` of an unknown error included).
      '@typescript-eslint/restrict-template-expressions': 'off',
      '@typescript-eslint/no-base-to-string': 'off',
      // Callbacks that return a promise to APIs typed void (event handlers, timers) are checked by floating-promises.
      '@typescript-eslint/no-misused-promises': ['error', { checksVoidReturn: false }],
      // Interfaces implemented by async and sync backends alike keep `async` on methods with no await.
      '@typescript-eslint/require-await': 'off',
      // Errors from native code and SDKs are rethrown as they come (RnodeError wraps what users see).
      '@typescript-eslint/prefer-promise-reject-errors': 'off',
      '@typescript-eslint/only-throw-error': 'off',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      // Bit flags and sizes use enums as number sets.
      '@typescript-eslint/no-unsafe-enum-comparison': 'off',
      '@typescript-eslint/no-redundant-type-constituents': 'off',
      // N-API functions and xxhash-wasm's destructured hashers do not use `this`.
      '@typescript-eslint/unbound-method': 'off',
      // Redundant `!` and `as` (18, autofixable): a --fix sweep would touch files other branches are changing;
      // run it after the folder moves and turn this on.
      '@typescript-eslint/no-unnecessary-type-assertion': 'off',
      // Shown, not failing, until their modules are next touched: 4 `any` at JSON and worker boundaries, 2 dead
      // stores, 1 rethrow without cause, 4 needless escapes.
      '@typescript-eslint/no-explicit-any': 'warn',
      'no-useless-assignment': 'warn',
      'preserve-caught-error': 'warn',
      'no-useless-escape': 'warn',
      // XML 1.0 forbids control characters: the vSphere parser matches them on purpose.
      'no-control-regex': 'off',
    },
  },
  {
    files: ['src/**/*.ts'],
    rules: {
      'no-restricted-syntax': [
        'error',
        {
          // Under /proc, where mkdir(2) answers ENOENT below an existing parent, Node's recursive mkdir never returns.
          selector: "CallExpression[callee.property.name=/^mkdir(Sync)?$/] Property[key.name='recursive']",
          message: "Node's recursive mkdir spins forever under /proc: use makeDirs (src/store/fs/dirs.ts).",
        },
      ],
    },
  },
  {
    files: ['test/**/*.ts'],
    extends: [tseslint.configs.recommended],
    rules: {
      // Tests read JSON output and poke at internals on purpose.
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' }],
      '@typescript-eslint/no-non-null-assertion': 'off',
      'no-useless-assignment': 'warn',
      'preserve-caught-error': 'warn',
    },
  },
);
