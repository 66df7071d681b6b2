CREATE TABLE `cache_daily_stats` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`cache_id` integer NOT NULL,
	`day` integer NOT NULL,
	`narinfo_hits` integer DEFAULT 0 NOT NULL,
	`narinfo_misses` integer DEFAULT 0 NOT NULL,
	`nar_downloads` integer DEFAULT 0 NOT NULL,
	`nar_bytes` integer DEFAULT 0 NOT NULL,
	FOREIGN KEY (`cache_id`) REFERENCES `caches`(`id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE UNIQUE INDEX `cache_daily_stats_cache_day` ON `cache_daily_stats` (`cache_id`,`day`);--> statement-breakpoint
CREATE TABLE `gc_runs` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`cache_name` text,
	`trigger` text NOT NULL,
	`dry_run` integer NOT NULL,
	`started_at` integer NOT NULL,
	`finished_at` integer NOT NULL,
	`report` text NOT NULL
);
--> statement-breakpoint
CREATE TABLE `leases` (
	`name` text PRIMARY KEY NOT NULL,
	`holder` text NOT NULL,
	`expires_at` integer NOT NULL
);
--> statement-breakpoint
ALTER TABLE `caches` ADD `retention_seconds` integer;--> statement-breakpoint
ALTER TABLE `caches` ADD `quota_bytes` integer;--> statement-breakpoint
ALTER TABLE `caches` ADD `deleted_at` integer;--> statement-breakpoint
ALTER TABLE `nars` ADD `unreferenced_at` integer;--> statement-breakpoint
ALTER TABLE `paths` ADD `pinned` integer DEFAULT false NOT NULL;--> statement-breakpoint
CREATE INDEX `paths_cache_created` ON `paths` (`cache_id`,`created_at`);