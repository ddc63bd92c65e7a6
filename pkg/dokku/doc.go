package dokku

// What Dokku does with plugin state on app lifecycle events, so this tool's
// triggers know what is theirs to do (dokku/dokku 0.38.x source):
//
// apps:rename OLD NEW (plugins/apps CommandRename): creates NEW, fires
// post-app-rename-setup OLD NEW, destroys OLD (post-delete OLD fires), then
// post-app-rename OLD NEW (which rebuilds NEW unless skipped).
//   - resource plugin, post-app-rename-setup: PropertyClone("resource", OLD,
//     NEW) then PropertyDestroy("resource", OLD). Every resource key moves,
//     network-* included: nothing for us to copy.
//   - docker-options plugin, post-app-rename-setup: PropertyClone +
//     PropertyDestroy of "docker-options" (0.38+); before 0.38 its bash trigger
//     copied DOKKU_ROOT/OLD/DOCKER_OPTIONS_{BUILD,DEPLOY,RUN} to NEW. Our blkio
//     lines move with them.
//   - NOBODY copies config/<our plugin>/OLD: our post-app-rename-setup must
//     run Properties(OwnerPlugin).Clone(OLD, NEW) then .Destroy(OLD), or the
//     record of which docker-options lines we wrote is lost and our own lines
//     turn into "operator" lines (ErrForeignOption on the next set).
//
// apps:clone OLD NEW: post-app-clone-setup OLD NEW — resource and
// docker-options do PropertyClone (keep OLD). Ours must Clone too.
//
// apps:destroy APP: post-delete APP — resource and docker-options
// PropertyDestroy their dirs. Ours must Destroy(APP) and drop budgets/attachments.
//
// Network values are never read by Dokku itself; no Dokku trigger fires when
// `resource:limit --network…` changes them (observed on 0.38.27).
