CREATE TABLE `build_logs` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`cache_id` integer NOT NULL,
	`drv` text NOT NULL,
	`storage_key` text NOT NULL,
	`size` integer NOT NULL,
	`created_at` integer DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)) NOT NULL,
	FOREIGN KEY (`cache_id`) REFERENCES `caches`(`id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE UNIQUE INDEX `build_logs_cache_drv` ON `build_logs` (`cache_id`,`drv`);--> statement-breakpoint
CREATE TABLE `caches` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`name` text NOT NULL,
	`public` integer DEFAULT true NOT NULL,
	`priority` integer DEFAULT 40 NOT NULL,
	`store_dir` text DEFAULT '/nix/store' NOT NULL,
	`description` text DEFAULT '' NOT NULL,
	`upstream_keys` text DEFAULT '' NOT NULL,
	`created_at` integer DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)) NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX `caches_name_unique` ON `caches` (`name`);--> statement-breakpoint
CREATE TABLE `nar_listings` (
	`nar_id` integer PRIMARY KEY NOT NULL,
	`listing` text NOT NULL,
	FOREIGN KEY (`nar_id`) REFERENCES `nars`(`id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE TABLE `nars` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`nar_hash` text NOT NULL,
	`nar_size` integer NOT NULL,
	`compression` text NOT NULL,
	`file_hash` text NOT NULL,
	`file_size` integer NOT NULL,
	`storage_key` text NOT NULL,
	`created_at` integer DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)) NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX `nars_nar_hash` ON `nars` (`nar_hash`);--> statement-breakpoint
CREATE UNIQUE INDEX `nars_file_hash` ON `nars` (`file_hash`);--> statement-breakpoint
CREATE UNIQUE INDEX `nars_storage_key` ON `nars` (`storage_key`);--> statement-breakpoint
CREATE TABLE `paths` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`cache_id` integer NOT NULL,
	`hash` text NOT NULL,
	`store_path` text NOT NULL,
	`nar_id` integer NOT NULL,
	`references` text NOT NULL,
	`deriver` text,
	`system` text,
	`ca` text,
	`sigs` text NOT NULL,
	`pushed_by` integer,
	`created_at` integer DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)) NOT NULL,
	`last_accessed_at` integer,
	FOREIGN KEY (`cache_id`) REFERENCES `caches`(`id`) ON UPDATE no action ON DELETE cascade,
	FOREIGN KEY (`nar_id`) REFERENCES `nars`(`id`) ON UPDATE no action ON DELETE no action
);
--> statement-breakpoint
CREATE UNIQUE INDEX `paths_cache_hash` ON `paths` (`cache_id`,`hash`);--> statement-breakpoint
CREATE INDEX `paths_nar` ON `paths` (`nar_id`);--> statement-breakpoint
CREATE TABLE `pending_uploads` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`storage_key` text NOT NULL,
	`created_at` integer DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)) NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX `pending_uploads_storage_key_unique` ON `pending_uploads` (`storage_key`);--> statement-breakpoint
CREATE TABLE `realisations` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`cache_id` integer NOT NULL,
	`output_id` text NOT NULL,
	`content` text NOT NULL,
	`created_at` integer DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)) NOT NULL,
	FOREIGN KEY (`cache_id`) REFERENCES `caches`(`id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE UNIQUE INDEX `realisations_cache_output` ON `realisations` (`cache_id`,`output_id`);--> statement-breakpoint
CREATE TABLE `signing_keys` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`cache_id` integer NOT NULL,
	`name` text NOT NULL,
	`public_key` text NOT NULL,
	`secret_encrypted` text NOT NULL,
	`active` integer DEFAULT true NOT NULL,
	`created_at` integer DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)) NOT NULL,
	`retired_at` integer,
	FOREIGN KEY (`cache_id`) REFERENCES `caches`(`id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE INDEX `signing_keys_cache` ON `signing_keys` (`cache_id`);--> statement-breakpoint
CREATE TABLE `tokens` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`name` text NOT NULL,
	`secret_hash` text NOT NULL,
	`prefix` text NOT NULL,
	`caches` text NOT NULL,
	`permissions` text NOT NULL,
	`created_at` integer DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)) NOT NULL,
	`expires_at` integer,
	`revoked_at` integer,
	`last_used_at` integer
);
--> statement-breakpoint
CREATE UNIQUE INDEX `tokens_secret_hash_unique` ON `tokens` (`secret_hash`);