package clientapi

import "github.com/gorilla/mux"

func (a *API) deviceRoutes(r *mux.Router) {}
